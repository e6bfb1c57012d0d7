"""The aiohttp application of one worker: routes, shared resources and their lifecycle.

Resources live in ``cleanup_ctx`` under typed :class:`web.AppKey`s so shutdown runs in
reverse order of start-up, and every call is hung up (within a time limit) before the
process exits.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

import parley
from media_server.manager import CallManager
from parley.config import REPO_ROOT, Settings
from personas import load_personas
from signaling import api, ws
from signaling.auth import TokenIssuer, load_secret
from signaling.errors import ApiError, error_middleware
from signaling.keys import CALLS, PERSONAS, SETTINGS, TOKENS

logger = logging.getLogger(__name__)

WEB_DIR = REPO_ROOT / "web"
STATIC_FILE = r"{name:[A-Za-z0-9_\-]+\.(?:js|mjs|css|svg|png|ico|json)}"


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[error_middleware])
    app[SETTINGS] = settings
    app[TOKENS] = TokenIssuer(load_secret(settings), settings.token_ttl_s)
    app[PERSONAS] = load_personas()
    if settings.persona not in app[PERSONAS]:
        raise ValueError(f"PARLEY_PERSONA={settings.persona!r} is not a known persona")
    app.cleanup_ctx.append(_calls_ctx)
    app.router.add_get("/", index)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics_page)
    api.setup_routes(app)
    ws.setup_routes(app)
    app.router.add_get("/" + STATIC_FILE, static_file)
    return app


async def _calls_ctx(app: web.Application) -> AsyncIterator[None]:
    manager = CallManager(app[SETTINGS])
    await manager.start()
    app[CALLS] = manager
    yield
    await manager.close_all(timeout=5.0)


async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def static_file(request: web.Request) -> web.StreamResponse:
    path: Path = WEB_DIR / request.match_info["name"]
    if not path.is_file():
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
