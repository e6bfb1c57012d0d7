-- Consented call recordings: one row per recorded call; the audio itself lives in the
-- recordings store (DATA_DIR/recordings or S3) under `key`. The rows go with their user or
-- session by cascade; the signaling layer removes the blobs first (users_api, retention).

CREATE TABLE recordings (
    id          uuid PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    session_id  uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    call_id     text NOT NULL,
    key         text NOT NULL,
    format      text NOT NULL,
    sample_rate integer NOT NULL,
    channels    text[] NOT NULL,
    duration_s  double precision NOT NULL,
    bytes       bigint NOT NULL,
    started_at  timestamptz NOT NULL,
    ended_at    timestamptz NOT NULL
);
CREATE INDEX recordings_user ON recordings (user_id, started_at);
CREATE INDEX recordings_session ON recordings (session_id);
