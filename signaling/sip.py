"""SIP wiring: the listener in the app's lifecycle, and ``POST /api/sip/calls`` (dial-out).

The SIP core (``media_server.sip``) knows nothing of sessions, personas or rooms; this
module gives it the hooks: a stored session per phone call (so the turn log, memories and
export work as for any call), the agent factory, the persona ids, and ``join_room``
(``sip:room-ID@host`` makes the caller a participant of that room, transport "sip"; dialling
out with ``room_id`` makes the answered phone one). The listener starts
only when ``PARLEY_SIP_PORT`` is set, after the calls manager (so shutdown hangs up SIP
calls with a BYE before the manager closes what is left).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Container
from typing import Any

from aiohttp import web

from media_server.call import CallSession
from media_server.rooms import RoomFull
from media_server.rooms.sip_participant import SipParticipant
from media_server.sip.call import SipCall
from media_server.sip.rtp import RtpLeg
from media_server.sip.server import SipHooks, SipServer
from media_server.sip.uac import DialError, dial
from signaling.errors import ApiError, read_json
from signaling.keys import AGENTS, CALLS, PERSONAS, ROOMS, SETTINGS, SIP, TOKENS
from signaling.rooms_api import room_or_error
from signaling.storage import new_session

logger = logging.getLogger(__name__)


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(_sip_ctx)
    app.router.add_post("/api/sip/calls", dial_out)


async def _sip_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    if not settings.sip_port:
        yield
        return

    async def session_for(persona_id: str, caller: str) -> CallSession:
        claims = await new_session(app, persona_id)
        logger.info("sip: session %s for %s", claims.session_id[:8], caller[:80])
        return CallSession(claims.session_id, claims.user_id, persona_id)

    async def join_room(room_id: str, name: str, leg: RtpLeg, hangup: Callable[[str], None]) -> SipParticipant:
        """``sip:room-ID@host``: the caller becomes a participant of room ID (on this worker)."""
        room = app[ROOMS].rooms.get(room_id)
        if room is None:
            raise LookupError(f"no room {room_id[:40]!r} on this worker")
        participant = SipParticipant(room, name, settings, leg, hangup)
        try:
            room.join(participant)
        except RoomFull:
            await participant.close("room full")
            raise
        logger.info("%s: %s joined by phone", participant.log_prefix, participant.name)
        return participant

    personas: Container[str] = app[PERSONAS].keys()
    server = SipServer(settings, app[CALLS], SipHooks(session_for, app[AGENTS], personas, join_room))
    await server.start()
    app[SIP] = server
    yield
    await server.close()


async def dial_out(request: web.Request) -> web.Response:
    """``{"to": "sip:…", "persona"?}`` -> 201 ``{"call_id", "session_id"}`` once answered.

    ``{"to", "room_id"}`` (with that room's token) calls the phone into the room instead:
    201 ``{"call_id", "room_id", "participant_id"}`` once it answers and has joined.
    """
    app = request.app
    server = app.get(SIP)
    body: dict[str, Any] = await read_json(request)
    room = room_or_error(request, body["room_id"]) if "room_id" in body else None
    if room is None:
        app[TOKENS].from_request(request, required=True)  # dialling out costs money: sessions only
    if server is None:
        raise ApiError(409, "sip_disabled", "SIP is off on this server (set PARLEY_SIP_PORT)")
    to = body.get("to")
    if not isinstance(to, str) or not to.startswith("sip:") or len(to) > 256:
        raise ApiError(400, "bad_target", 'to must be a "sip:user@host[:port]" URI')
    persona = room.persona_id if room is not None else body.get("persona") or app[SETTINGS].persona
    if persona not in app[PERSONAS]:
        raise ApiError(400, "unknown_persona", f"unknown persona {persona!r}")
    try:
        phone = await dial(server, to, persona, room=room.id if room is not None else None)
    except DialError as exc:
        raise ApiError(exc.http_status, exc.code, str(exc)) from exc
    if room is not None:
        return web.json_response({"call_id": phone.id, "room_id": room.id, "participant_id": phone.id},
                                 status=201)
    assert isinstance(phone, SipCall)
    return web.json_response({"call_id": phone.id, "session_id": phone.session.session_id}, status=201)
