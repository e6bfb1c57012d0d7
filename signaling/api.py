"""HTTP API: personas, sessions and SDP offer/answer (WHIP, RFC 9725, is ``signaling.whip``)."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from media_server import dtls_compat
from media_server.call import CallSession, RtcCall
from media_server.manager import TooManyCalls
from media_server.rtc_peer import BadOffer
from personas import Persona
from signaling import rooms_api
from signaling.admission import ADMISSION
from signaling.auth import Claims
from signaling.errors import ApiError, read_json
from signaling.keys import AGENTS, CALLS, PERSONAS, RECORDINGS, SETTINGS, TOKENS
from signaling.ratelimit import client_ip
from signaling.routing import claim_new, refusal
from signaling.sdp_guard import check_offer
from signaling.storage import new_session, resume_session
from signaling.turn_credentials import ice_servers

logger = logging.getLogger(__name__)


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/api/personas", list_personas)
    app.router.add_post("/api/sessions", create_session)
    app.router.add_post("/api/offer", offer)


async def list_personas(request: web.Request) -> web.Response:
    """Every persona's public fields, with its plot nodes so a client can offer them."""
    return web.json_response([p.public() for p in request.app[PERSONAS].values()])


def persona_or_400(app: web.Application, persona_id: Any) -> Persona:
    if persona_id is None or persona_id == "":
        persona_id = app[SETTINGS].persona
    personas = app[PERSONAS]
    if not isinstance(persona_id, str) or persona_id not in personas:
        known = ", ".join(sorted(personas))
        raise ApiError(400, "unknown_persona", f"unknown persona {persona_id!r}; known: {known}")
    return personas[persona_id]


def session_body(app: web.Application, claims: Claims) -> dict[str, Any]:
    settings = app[SETTINGS]
    return {
        "session_id": claims.session_id,
        "user_id": claims.user_id,
        "token": app[TOKENS].encode(claims),
        "expires_at": claims.expires_at,
        "ice_servers": ice_servers(settings.ice_server_urls, settings.turn_server_urls,
                                   settings.turn_secret, claims.user_id, settings.turn_ttl_s),
    }


async def create_session(request: web.Request) -> web.Response:
    """A new session; a still-valid token in the request keeps the same user.

    With ``session_id`` (and that session's token) the session is resumed instead: a page
    reconnecting after a dropped network or a server restart keeps its conversation window,
    which is keyed by session id. ``200`` then, with a fresh token; ``201`` for a new one
    (also when the session to resume is gone, e.g. deleted or expired by retention).
    """
    app = request.app
    body = await read_json(request) if request.can_read_body else {}
    persona = persona_or_400(app, body.get("persona"))
    previous = app[TOKENS].from_request(request, required=False)
    wanted = body.get("session_id")
    if wanted is not None:
        if previous is None:
            raise ApiError(401, "unauthorized", "session_id needs the session's token")
        if wanted != previous.session_id:
            raise ApiError(403, "forbidden", "the token does not belong to that session")
        resumed = await resume_session(app, previous, persona.id)
        if resumed is not None:
            await replace_calls(app, resumed.session_id)
            return web.json_response(session_body(app, resumed), status=200)
    claims = await new_session(app, persona.id, previous.user_id if previous else None)
    return web.json_response(session_body(app, claims), status=201)


async def replace_calls(app: web.Application, session_id: str) -> None:
    """Hang up this worker's calls of a resumed session: the client that resumes it has
    lost them (its old peer may not have been noticed as gone yet), and two agents must not
    answer in the same conversation window."""
    stale = [c for c in app[CALLS].calls.values() if c.session.session_id == session_id]
    for call in stale:
        logger.info("%s: replaced by a resumed session", call.log_prefix)
        await call.close("replaced")


async def resolve_session(request: web.Request, persona_id: Any, session_id: Any) -> tuple[Claims, Persona]:
    """The caller's session (from its token), or a fresh anonymous one for token-less clients."""
    app = request.app
    claims = app[TOKENS].from_request(request, required=False)
    if claims is None:
        if session_id:
            raise ApiError(401, "unauthorized", "session_id needs the session's token")
        persona = persona_or_400(app, persona_id)
        return await new_session(app, persona.id), persona
    if session_id and session_id != claims.session_id:
        raise ApiError(403, "forbidden", "the token does not belong to that session")
    return claims, persona_or_400(app, persona_id or claims.persona)


def record_consent(body: dict[str, Any]) -> bool:
    """The client's ``"record"`` flag: only an explicit ``true`` consents to recording."""
    record = body.get("record", False)
    if not isinstance(record, bool):
        raise ApiError(400, "bad_record", "'record' must be true (record this call, with consent) or false")
    return record


async def open_call(request: web.Request, claims: Claims, persona: Persona, sdp: str, *,
                    system_dtls: bool = False, record: bool = False) -> RtcCall:
    """Answer ``sdp`` with a new call, within admission (``/api/offer`` and WHIP alike).

    ``system_dtls``: the peer does DTLS on the system OpenSSL (WHIP publishers, see
    ``media_server.dtls_compat``). ``record``: the client consented to the call being
    recorded (``signaling.recordings``); without it nothing is recorded.
    """
    app = request.app
    session = CallSession(claims.session_id, claims.user_id, persona.id)
    recording = app[RECORDINGS].factory(session) if record else None
    ip = client_ip(request)
    try:
        with app[ADMISSION].answering(ip, claims.user_id), dtls_compat.system_dtls(enabled=system_dtls):
            call = await app[CALLS].open_rtc(session, sdp, app[AGENTS], recording)
    except BadOffer as exc:
        raise ApiError(400, "bad_sdp", str(exc)) from exc
    except TooManyCalls as exc:
        raise refusal(exc) from exc
    app[ADMISSION].track(call, ip)
    await claim_new(app, "call", call.id)  # owned before its id reaches the client: later requests find it
    logger.info("%s: call started: %s %s%s", call.log_prefix, call.transport, persona.id,
                ", recorded (consent given)" if record else "")
    return call


async def offer(request: web.Request) -> web.Response:
    body = await read_json(request)
    if body.get("type") != "offer":
        raise ApiError(400, "bad_sdp", 'type must be "offer"')
    record = record_consent(body)
    sdp = check_offer(body.get("sdp"))
    if body.get("room_id") is not None:  # with the room's token; record = the participant's consent
        return await rooms_api.offer(request, body, sdp, record)
    claims, persona = await resolve_session(request, body.get("persona"), body.get("session_id"))
    call = await open_call(request, claims, persona, sdp, record=record)
    return web.json_response(
        {"sdp": call.pc.localDescription.sdp, "type": "answer", "session_id": claims.session_id,
         "call_id": call.id, "recording": call.recorder is not None}
    )
