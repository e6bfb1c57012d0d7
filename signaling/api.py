"""HTTP API: personas, sessions, SDP offer/answer and WHIP (RFC 9725)."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from media_server.call import BadOffer, CallSession
from media_server.manager import TooManyCalls
from personas import Persona
from signaling.auth import Claims
from signaling.errors import ApiError, read_json
from signaling.keys import AGENTS, CALLS, PERSONAS, SETTINGS, TOKENS
from signaling.storage import new_session

logger = logging.getLogger(__name__)

MAX_SDP = 64 * 1024


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/api/personas", list_personas)
    app.router.add_post("/api/sessions", create_session)
    app.router.add_post("/api/offer", offer)
    app.router.add_post("/whip", whip_post)
    app.router.add_delete("/whip/{call_id}", whip_delete)


async def list_personas(request: web.Request) -> web.Response:
    return web.json_response([
        {"id": p.id, "name": p.name, "description": p.description, "voice": p.voice}
        for p in request.app[PERSONAS].values()
    ])


def persona_or_400(app: web.Application, persona_id: Any) -> Persona:
    if persona_id is None or persona_id == "":
        persona_id = app[SETTINGS].persona
    if not isinstance(persona_id, str) or persona_id not in app[PERSONAS]:
        known = ", ".join(sorted(app[PERSONAS]))
        raise ApiError(400, "unknown_persona", f"unknown persona {persona_id!r}; known: {known}")
    return app[PERSONAS][persona_id]


def session_body(app: web.Application, claims: Claims) -> dict[str, Any]:
    return {
        "session_id": claims.session_id,
        "user_id": claims.user_id,
        "token": app[TOKENS].encode(claims),
        "expires_at": claims.expires_at,
        "ice_servers": [{"urls": url} for url in app[SETTINGS].ice_server_urls],
    }


async def create_session(request: web.Request) -> web.Response:
    """A new session; a still-valid token in the request keeps the same user."""
    body = await read_json(request) if request.can_read_body else {}
    persona = persona_or_400(request.app, body.get("persona"))
    previous = request.app[TOKENS].from_request(request, required=False)
    claims = await new_session(request.app, persona.id, previous.user_id if previous else None)
    return web.json_response(session_body(request.app, claims), status=201)


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


async def start_call(request: web.Request, claims: Claims, persona: Persona, sdp: str) -> tuple[str, str]:
    """Answer ``sdp`` with a new call; returns (call id, answer SDP)."""
    app = request.app
    session = CallSession(claims.session_id, claims.user_id, persona.id)
    try:
        call = await app[CALLS].open_rtc(session, sdp, app[AGENTS])
    except BadOffer as exc:
        raise ApiError(400, "bad_sdp", str(exc)) from exc
    except TooManyCalls as exc:
        raise ApiError(503, "busy", str(exc)) from exc
    logger.info("%s: %s call for persona %s", call.log_prefix, call.transport, persona.id)
    return call.id, call.pc.localDescription.sdp


async def offer(request: web.Request) -> web.Response:
    body = await read_json(request)
    sdp, kind = body.get("sdp"), body.get("type")
    if kind != "offer":
        raise ApiError(400, "bad_sdp", 'type must be "offer"')
    if not isinstance(sdp, str) or not sdp.startswith("v=0") or len(sdp) > MAX_SDP:
        raise ApiError(400, "bad_sdp", "sdp must be an SDP offer string (v=0 …)")
    claims, persona = await resolve_session(request, body.get("persona"), body.get("session_id"))
    call_id, answer = await start_call(request, claims, persona, sdp)
    return web.json_response(
        {"sdp": answer, "type": "answer", "session_id": claims.session_id, "call_id": call_id}
    )


async def whip_post(request: web.Request) -> web.Response:
    if request.content_type != "application/sdp":
        raise ApiError(415, "unsupported_media_type", "WHIP offers are Content-Type: application/sdp")
    sdp = await request.text()
    if not sdp.startswith("v=0") or len(sdp) > MAX_SDP:
        raise ApiError(400, "bad_sdp", "body must be an SDP offer")
    claims, persona = await resolve_session(request, request.query.get("persona"), None)
    call_id, answer = await start_call(request, claims, persona, sdp)
    return web.Response(
        status=201, text=answer, content_type="application/sdp",
        headers={"Location": f"/whip/{call_id}", "X-Parley-Session": claims.session_id},
    )


async def whip_delete(request: web.Request) -> web.Response:
    call = request.app[CALLS].calls.get(request.match_info["call_id"])
    if call is None:
        raise ApiError(404, "not_found", "no such call on this worker")
    await call.close("WHIP DELETE")
    return web.Response(status=204)
