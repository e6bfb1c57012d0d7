-- Room recordings: one row per consenting speaker's track (a participant's voice, or the
-- agent's, which belongs to the room's creator). `room_id` names the room; NULL for a 1:1
-- call. `call_id` is then the participant's id in the room, or 'agent'.

ALTER TABLE recordings ADD COLUMN room_id text;
CREATE INDEX recordings_room ON recordings (room_id) WHERE room_id IS NOT NULL;
