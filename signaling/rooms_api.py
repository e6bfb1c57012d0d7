"""HTTP API of multi-party rooms: create, inspect, end, and join (WebRTC offer or WHIP).

A room token is a session token whose session id is ``room:<id>``: anyone holding the
room's link (which carries it) may join, look at the room and end it; nobody else can.
Joining with ``POST /api/offer {"room_id", "name"}`` and ``POST /whip?room=ID&name=N`` both
end in :func:`join`, which answers the offer with a new participant of that room.

Recording (``signaling.recordings``) takes everyone's consent. ``POST /api/rooms`` with
``"record": true`` is the creator's: the room is recorded per speaker, and the agent's voice
is kept for the creator's user (the request's session token, or a new anonymous session
returned as ``session``). Then every join must say ``"record": true`` too — the
participant's own consent; their voice is kept for their user (``session_token`` in the
body, or a new anonymous session, returned as ``session`` so they can export or delete it).
A join without it — and WHIP or ``/ws``, which cannot say it — is refused with
``403 recording_consent_required``: nobody in a recorded room is unrecorded by accident, nor
recorded without having agreed.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web

from media_server.call import CallSession, RecorderFactory
from media_server.rooms import AGENT_ID, ConsentRequired, Room, RoomFull, RoomManager, RtcParticipant
from media_server.rooms.tracks import RoomVoice
from media_server.rooms.ws_participant import WsParticipant
from media_server.rtc_peer import BadOffer
from pipeline import events
from pipeline.agent import AgentContext
from pipeline.agent.floor import POLICIES
from pipeline.agent.room import RoomAgent
from pipeline.dsp.turn_model import turn_model_for
from signaling.auth import WS_PROTOCOL, Claims
from signaling.errors import ApiError, read_json
from signaling.keys import PERSONAS, RECORDINGS, ROOMS, SERVICES, SETTINGS, STORE, TOKENS
from signaling.routing import claim_new
from signaling.storage import new_session
from storage import rooms as room_rows

logger = logging.getLogger(__name__)

MAX_ROOM_NAME = 80
#: the mono track of each recorded speaker
PARTICIPANT_CHANNELS = ("participant",)
AGENT_CHANNELS = (AGENT_ID,)
_NO_CONSENT = ("this room is recorded: join with POST /api/offer and \"record\": true to consent to your "
               "voice being recorded, or do not join")


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(_rooms_ctx)
    app.router.add_post("/api/rooms", create_room)
    app.router.add_get("/api/rooms/{room_id}", get_room)
    app.router.add_delete("/api/rooms/{room_id}", delete_room)
    app.router.add_get("/api/rooms/{room_id}/transcript", get_transcript)
    app.router.add_delete("/whip/room/{room_id}/{participant_id}", whip_delete)


async def _rooms_ctx(app: web.Application) -> AsyncIterator[None]:
    manager = RoomManager(app[SETTINGS])
    app[ROOMS] = manager
    yield
    await manager.close_all(timeout=5.0)


def _room_claims(room_id: str) -> str:
    return f"room:{room_id}"


def room_or_error(request: web.Request, room_id: Any) -> Room:
    """The room, if the request's token is that room's token (401/403/404 otherwise)."""
    claims = request.app[TOKENS].from_request(request, required=True)
    assert claims is not None
    if not isinstance(room_id, str) or claims.session_id != _room_claims(room_id):
        raise ApiError(403, "forbidden", "the token does not belong to that room")
    room = request.app[ROOMS].rooms.get(room_id)
    if room is None:
        raise ApiError(404, "not_found", "no such room on this worker (it may have ended)")
    return room


async def create_room(request: web.Request) -> web.Response:
    from signaling.api import persona_or_400, record_consent, session_body  # the rules of calls, shared

    body = await read_json(request)
    persona = persona_or_400(request.app, body.get("persona"))
    record = record_consent(body)
    policy = body.get("policy") or "mention_only"
    if policy not in POLICIES:
        raise ApiError(400, "bad_policy", f"policy must be one of {', '.join(POLICIES)}")
    name = " ".join(str(body.get("name") or "").split())[:MAX_ROOM_NAME]
    app = request.app
    services = app.get(SERVICES)
    store = app.get(STORE)
    sink = (lambda *line: room_rows.add_line(store.pool, *line)) if store is not None else None
    room = Room(persona.id, persona.name, policy, name, app[SETTINGS],
                services.stt if services is not None else None, sink,
                turn_model_for(app[SETTINGS], services))
    owner = await _recording_owner(request, persona.id, request.app[TOKENS].from_request(request, required=False)) \
        if record else None
    app[ROOMS].add(room, _agent_maker(app), _recorder(app, room, owner, AGENT_CHANNELS))
    await claim_new(app, "room", room.id)  # owned before its id reaches the client: joins find it
    tokens = app[TOKENS]
    token = tokens.encode(tokens.claims(_room_claims(room.id), "room", persona.id))
    join_url = f"{request.scheme}://{request.host}/room?room={room.id}#token={token}"
    logger.info("%s: created for persona %s (%s)%s", room.log_prefix, persona.id, policy,
                ", recorded per speaker (creator's consent given)" if record else "")
    reply: dict[str, Any] = {"room_id": room.id, "token": token, "join_url": join_url, "recording": record}
    if owner is not None:
        reply["session"] = session_body(app, owner)
    return web.json_response(reply, status=201)


async def _recording_owner(request: web.Request, persona_id: str, claims: Claims | None) -> Claims:
    """The session whose user a consenting speaker's recording will belong to: the one
    ``claims`` (a session token) names, else a new anonymous one. A room token owns nothing."""
    if claims is None:
        return await new_session(request.app, persona_id)
    if claims.session_id.startswith(_room_claims("")):
        raise ApiError(403, "forbidden", "a room token cannot own recordings; send a session token")
    return claims


def _recorder(app: web.Application, room: Room, owner: Claims | None,
              channels: tuple[str, ...]) -> RecorderFactory | None:
    """Makes the recorder of one speaker of ``room`` for ``owner``'s user; None without consent."""
    if owner is None:
        return None
    return app[RECORDINGS].factory(CallSession(owner.session_id, owner.user_id, room.persona_id), channels,
                                   room.id)


def _agent_maker(app: web.Application) -> Callable[..., RoomAgent | None]:
    """The persona as a room participant; none for the echo diagnostic (it has no voice)."""

    def make(room: Room, voice: RoomVoice, emit: Callable[[dict[str, Any]], None],
             floor_free: Callable[[], bool]) -> RoomAgent | None:
        persona = app[PERSONAS][room.persona_id]
        services = app.get(SERVICES)
        if persona.kind == "echo" or services is None:
            return None
        ctx = AgentContext(app[SETTINGS], "room", _room_claims(room.id), services)
        return RoomAgent(persona, voice, emit, ctx, room.policy, floor_free)

    return make


async def get_room(request: web.Request) -> web.Response:
    return web.json_response(room_or_error(request, request.match_info["room_id"]).describe())


async def delete_room(request: web.Request) -> web.Response:
    room = room_or_error(request, request.match_info["room_id"])
    await room.close("DELETE")
    return web.Response(status=204)


async def get_transcript(request: web.Request) -> web.Response:
    room_id = request.match_info["room_id"]
    claims = request.app[TOKENS].from_request(request, required=True)
    if claims is None or claims.session_id != _room_claims(room_id):
        raise ApiError(403, "forbidden", "the token does not belong to that room")
    store = request.app.get(STORE)
    lines = await room_rows.transcript(store.pool, room_id) if store is not None else []
    return web.json_response({"room_id": room_id, "lines": lines})


async def join(request: web.Request, room: Room, name: Any, sdp: str,
               owner: Claims | None = None) -> tuple[RtcParticipant, str]:
    """Answer ``sdp`` with a new participant of the room; returns it and the answer SDP.

    ``owner``: the participant consented to being recorded; their voice is kept for that
    session's user if the room is recorded. A recorded room refuses a join without it.
    """
    if room.recorded and owner is None:
        raise ApiError(403, "recording_consent_required", _NO_CONSENT)
    participant = RtcParticipant(room, name, request.app[SETTINGS])
    try:
        answer = await participant.accept(sdp)
        room.join(participant, _recorder(request.app, room, owner, PARTICIPANT_CHANNELS))
    except ConsentRequired as exc:  # checked above; kept for a room that started recording meanwhile
        await participant.close("no recording consent")
        raise ApiError(403, "recording_consent_required", _NO_CONSENT) from exc
    except BadOffer as exc:
        await participant.close("offer rejected")
        raise ApiError(400, "bad_sdp", str(exc)) from exc
    except RoomFull as exc:
        await participant.close("room full")
        raise ApiError(503, "room_full", str(exc)) from exc
    logger.info("%s: %s joined", participant.log_prefix, participant.name)
    return participant, answer


async def offer(request: web.Request, body: dict[str, Any], sdp: str, record: bool) -> web.Response:
    """``POST /api/offer {"room_id", "name", "record"?, "session_token"?}`` with the room token.

    ``record``: the participant's consent; in a recorded room their recording belongs to the
    user of ``session_token`` (their own session token: the Authorization header holds the
    room's) or of a new anonymous session, returned as ``session``.
    """
    from signaling.api import session_body  # shared with calls; api imports this module

    room = room_or_error(request, body.get("room_id"))
    owner = await _recording_owner(request, room.persona_id, _session_claims(request, body.get("session_token"))) \
        if record and room.recorded else None
    participant, answer = await join(request, room, body.get("name"), sdp, owner)
    reply: dict[str, Any] = {"sdp": answer, "type": "answer", "room_id": room.id,
                             "participant_id": participant.id, "recording": owner is not None}
    if owner is not None:
        reply["session"] = session_body(request.app, owner)
    return web.json_response(reply)


def _session_claims(request: web.Request, token: Any) -> Claims | None:
    """The claims of a participant's own session token from the body (None when absent)."""
    if token is None:
        return None
    if not isinstance(token, str) or not token:
        raise ApiError(400, "bad_token", "'session_token' must be a session token")
    return request.app[TOKENS].decode(token)


async def whip(request: web.Request, sdp: str) -> web.Response:
    room = room_or_error(request, request.query.get("room"))
    participant, answer = await join(request, room, request.query.get("name"), sdp)
    return web.Response(status=201, text=answer, content_type="application/sdp", headers={
        "Location": f"/whip/room/{participant.room.id}/{participant.id}",
        "X-Parley-Participant": participant.id,
    })


async def websocket(request: web.Request) -> web.StreamResponse:
    """``GET /ws?room=ID&name=N`` (room token as the subprotocol): join a room over the WebSocket fallback."""
    room = room_or_error(request, request.query.get("room"))
    if room.recorded:  # the WebSocket join has no way to consent
        raise ApiError(403, "recording_consent_required", _NO_CONSENT)
    if len(room.participants) >= room.settings.room_max_participants:
        raise ApiError(503, "room_full", "the room is full")
    ws = web.WebSocketResponse(heartbeat=10.0, max_msg_size=256 * 1024, protocols=(WS_PROTOCOL,))
    await ws.prepare(request)
    participant = WsParticipant(room, request.query.get("name", ""), request.app[SETTINGS], ws)
    try:
        room.join(participant)
    except RoomFull as exc:
        participant.events.send(events.error("room_full", str(exc)))
        await participant.close("room full")
        return ws
    participant.events.send(events.joined(room.id, participant.id))
    await participant.run()
    return ws


async def whip_delete(request: web.Request) -> web.Response:
    room = request.app[ROOMS].rooms.get(request.match_info["room_id"])
    participant = room.participants.get(request.match_info["participant_id"]) if room else None
    if participant is None:
        raise ApiError(404, "not_found", "no such room participant on this worker")
    await participant.close("WHIP DELETE")
    return web.Response(status=204)
