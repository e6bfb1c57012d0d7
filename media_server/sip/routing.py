"""Where an inbound call goes, from the user part of its request-URI.

``sip:socrates@host`` talks to that persona, ``sip:room-ID@host`` joins room ID, and a
number or an empty user (what a PBX trunk sends for a DID) reaches the default persona.
Anything else is 404: guessing would put a caller through to the wrong persona.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass

ROOM_PREFIX = "room-"


@dataclass(frozen=True, slots=True)
class Route:
    kind: str  # "persona" | "room"
    target: str


def route(user: str, personas: Container[str], default_persona: str) -> Route | None:
    """The route for request-URI user ``user``, or None when nothing answers there."""
    if user in personas:
        return Route("persona", user)
    if user.startswith(ROOM_PREFIX) and len(user) > len(ROOM_PREFIX):
        return Route("room", user[len(ROOM_PREFIX) :])
    if user == "" or user.lstrip("+").isdigit():
        return Route("persona", default_persona)
    return None
