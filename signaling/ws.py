"""``GET /ws``: the WebSocket fallback — events plus audio as JSON, for clients without WebRTC."""

from __future__ import annotations

import logging

from aiohttp import web

from media_server.call import CallSession
from media_server.manager import TooManyCalls
from media_server.ws_call import WsCall
from signaling import rooms_api
from signaling.admission import ADMISSION
from signaling.api import resolve_session
from signaling.auth import WS_PROTOCOL
from signaling.keys import AGENTS, CALLS, SETTINGS
from signaling.ratelimit import client_ip
from signaling.routing import claim_new, refusal

logger = logging.getLogger(__name__)


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/ws", websocket)


async def websocket(request: web.Request) -> web.StreamResponse:
    if "room" in request.query:  # joining a room, with the room's token
        return await rooms_api.websocket(request)
    claims, persona = await resolve_session(request, request.query.get("persona"), None)
    manager = request.app[CALLS]
    request.app[ADMISSION].check(client_ip(request), claims.user_id, connects_at_once=True)
    try:
        manager.check_capacity()
    except TooManyCalls as exc:
        raise refusal(exc) from exc
    # the token rides in as a subprotocol; only parley.v1 is echoed back, never the token
    # heartbeat at half the liveness timeout: a silent client (no pong) is closed within it
    heartbeat = max(1.0, request.app[SETTINGS].liveness_timeout_s / 2)
    ws = web.WebSocketResponse(heartbeat=heartbeat, max_msg_size=256 * 1024, protocols=(WS_PROTOCOL,))
    await ws.prepare(request)
    session = CallSession(claims.session_id, claims.user_id, persona.id)
    call = WsCall(session, request.app[AGENTS], ws)
    manager.register(call)
    await claim_new(request.app, "call", call.id)
    logger.info("%s: call started: %s %s", call.log_prefix, call.transport, persona.id)
    await call.run()
    return ws
