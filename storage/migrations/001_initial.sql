-- Parley schema, version 1. Applied once, inside the migration transaction (see postgres.py).
-- Every row that belongs to a user references users(id) ON DELETE CASCADE, so deleting the
-- user row is enough to erase them from Postgres (the privacy route relies on this).

CREATE TABLE users (
    id              uuid PRIMARY KEY,
    username        text UNIQUE,
    email           text UNIQUE,
    hashed_password text,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- Personas, upserted from the persona files at start-up; config_json keeps the whole record.
CREATE TABLE roles (
    id            text PRIMARY KEY,
    name          text NOT NULL,
    system_prompt text NOT NULL DEFAULT '',
    default_voice text,
    config_json   jsonb NOT NULL DEFAULT '{}',
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sessions (
    id          uuid PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role_id     text NOT NULL REFERENCES roles (id),
    state_json  jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    last_active timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sessions_user ON sessions (user_id);

-- Long-term memory rows; the vector lives in Milvus under embedding_id (NULL once archived).
-- weight is the memory's strength at last_used_at; it decays with a half-life from there.
CREATE TABLE memories (
    id           uuid PRIMARY KEY,
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role_id      text NOT NULL REFERENCES roles (id),
    text         text NOT NULL,
    embedding_id text,
    metadata     jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz NOT NULL DEFAULT now(),
    weight       real NOT NULL DEFAULT 1,
    archived     boolean NOT NULL DEFAULT false
);
CREATE INDEX memories_owner ON memories (user_id, role_id) WHERE NOT archived;

-- One row per agent turn: where the time went and what it cost.
CREATE TABLE turns (
    id         bigserial PRIMARY KEY,
    session_id uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role_id    text NOT NULL,
    started_at timestamptz NOT NULL,
    latency_ms jsonb NOT NULL DEFAULT '{}',
    usage      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX turns_session ON turns (session_id, started_at);
CREATE INDEX turns_user ON turns (user_id);
