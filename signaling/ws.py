"""``GET /ws``: the WebSocket fallback — events plus audio as JSON, for clients without WebRTC."""

from __future__ import annotations

from aiohttp import web

from media_server.call import CallSession
from media_server.manager import TooManyCalls
from media_server.ws_call import WsCall
from signaling.api import resolve_session
from signaling.errors import ApiError
from signaling.keys import AGENTS, CALLS


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/ws", websocket)


async def websocket(request: web.Request) -> web.StreamResponse:
    claims, persona = await resolve_session(request, request.query.get("persona"), None)
    manager = request.app[CALLS]
    try:
        manager.check_capacity()
    except TooManyCalls as exc:
        raise ApiError(503, "busy", str(exc)) from exc
    ws = web.WebSocketResponse(heartbeat=10.0, max_msg_size=256 * 1024)
    await ws.prepare(request)
    session = CallSession(claims.session_id, claims.user_id, persona.id)
    call = WsCall(session, request.app[AGENTS], ws)
    manager.register(call)
    await call.run()
    return ws
