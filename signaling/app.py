"""The aiohttp application of one worker: routes, shared resources and their lifecycle.

Resources live in ``cleanup_ctx`` under typed :class:`web.AppKey`s so shutdown runs in
reverse order of start-up. Every call is hung up (within a time limit) in ``on_shutdown``,
which aiohttp runs before any cleanup context tears down: a call's last turn may still
write to storage or use a model on its way out.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import parley
from media_server.agent_track import AgentTrack
from media_server.call import AgentFactory, CallSession
from media_server.manager import CallManager
from parley.config import REPO_ROOT, Settings
from personas import UnknownPersona, load_personas
from pipeline.agent import Agent, AgentContext, Emit, create_agent
from pipeline.services import Services
from signaling import admission, api, origin, ratelimit, rooms_api, routing, sip, storage, whip, ws
from signaling.auth import TokenIssuer, load_secret
from signaling.errors import ApiError, error_middleware
from signaling.keys import AGENTS, CALLS, MEMORY, PERSONAS, SERVICES, SETTINGS, STORE, TOKENS, WINDOW

logger = logging.getLogger(__name__)

CALLS_SHUTDOWN_TIMEOUT_S = 5.0

WEB_DIR = REPO_ROOT / "web"
STATIC_FILE = r"{name:[A-Za-z0-9_\-]+\.(?:js|mjs|css|svg|png|ico|json)}"


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[error_middleware])
    app[SETTINGS] = settings
    app[TOKENS] = TokenIssuer(load_secret(settings), settings.token_ttl_s, settings.export_token_ttl_s)
    app[PERSONAS] = load_personas()
    if settings.persona not in app[PERSONAS]:
        raise ValueError(f"PARLEY_PERSONA={settings.persona!r} is not a known persona")
    app[AGENTS] = agent_factory(app)
    storage.setup(app)
    app.cleanup_ctx.append(_services_ctx)
    app.cleanup_ctx.append(_calls_ctx)
    app.on_shutdown.append(_hang_up_calls)
    sip.setup(app)  # after the calls manager: SIP calls get their BYE first at shutdown
    rooms_api.setup(app)
    admission.setup(app)
    origin.setup(app)
    ratelimit.setup(app)
    routing.setup(app)  # after the calls: the cluster follows the call manager's calls
    app.router.add_get("/", index)
    app.router.add_get("/room", room_page)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics_page)
    api.setup_routes(app)
    whip.setup_routes(app)
    ws.setup_routes(app)
    app.router.add_get("/" + STATIC_FILE, static_file)
    return app


def agent_factory(app: web.Application) -> AgentFactory:
    """Agents by persona id, for new calls and for ``settings {persona}`` mid-call."""

    def make(session: CallSession, persona_id: str, track: AgentTrack, emit: Emit) -> Agent:
        personas = app[PERSONAS]
        if persona_id not in personas:
            raise UnknownPersona(persona_id)
        ctx = AgentContext(app[SETTINGS], session.user_id, session.session_id, app.get(SERVICES))
        return create_agent(personas[persona_id], track, emit, ctx)

    return make


async def _services_ctx(app: web.Application) -> AsyncIterator[None]:
    """Load the model backends and controls before serving, off the event loop.

    Backends are per-process singletons; loading them here means a call's agent finds
    them ready instead of loading weights on the event loop when the first call arrives.
    """
    if not any(p.kind != "echo" for p in app[PERSONAS].values()):
        yield
        return
    services = await Services.open(app[SETTINGS])
    services.memory, services.window, services.store = app[MEMORY], app[WINDOW], app[STORE]
    app[SERVICES] = services
    yield
    await services.close()


async def _calls_ctx(app: web.Application) -> AsyncIterator[None]:
    manager = CallManager(app[SETTINGS])
    await manager.start()
    app[CALLS] = manager
    yield
    await manager.close_all(timeout=CALLS_SHUTDOWN_TIMEOUT_S)  # no-op after _hang_up_calls


async def _hang_up_calls(app: web.Application) -> None:
    """``on_shutdown``: close every call (bounded) while storage and services are still up."""
    manager = app.get(CALLS)
    if manager is not None:  # None when start-up failed before the calls context
        await manager.close_all(timeout=CALLS_SHUTDOWN_TIMEOUT_S)


async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def room_page(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(WEB_DIR / "room.html", headers={"Cache-Control": "no-cache"})


async def static_file(request: web.Request) -> web.StreamResponse:
    path: Path = WEB_DIR / request.match_info["name"]
    if not await asyncio.to_thread(path.is_file):
        raise ApiError(404, "not_found", f"no such file: {request.match_info['name']}")
    return web.FileResponse(path, headers={"Cache-Control": "no-cache"})


async def health(request: web.Request) -> web.Response:
    calls = request.app[CALLS]
    return web.json_response({
        "status": "ok",
        "version": parley.__version__,
        "pid": os.getpid(),
        "calls": len(calls.calls),
        "loop_late_ticks": calls.loop_late_ticks,
    })


async def metrics_page(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})
