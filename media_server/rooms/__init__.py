"""Multi-party rooms: the mixer (mix-minus on one 20 ms clock), the room and its registry,
the participant legs and their tracks."""

from media_server.rooms.participant import RtcParticipant
from media_server.rooms.room import AGENT_ID, ConsentRequired, Room, RoomFull, RoomManager

__all__ = ["AGENT_ID", "ConsentRequired", "Room", "RoomFull", "RoomManager", "RtcParticipant"]
