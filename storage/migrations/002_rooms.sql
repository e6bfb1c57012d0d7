-- Multi-party rooms: the attributed transcript of each room. Rooms themselves live in a
-- worker's memory; their transcript outlives them. participant_id is 'agent' for the persona.

CREATE TABLE room_transcript (
    id             bigserial PRIMARY KEY,
    room_id        text NOT NULL,
    participant_id text NOT NULL,
    speaker        text NOT NULL,
    text           text NOT NULL,
    at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX room_transcript_room ON room_transcript (room_id, id);
