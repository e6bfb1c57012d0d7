"""Cross-site request checks: a browser page from another site may not start calls or change data.

Browsers attach ``Origin`` to every cross-origin POST/DELETE and to every WebSocket handshake,
and a page cannot forge it. So for state-changing methods and ``/ws`` a request that carries an
``Origin`` must come from this server's own origin (same host and port) or one listed in
``PARLEY_ALLOWED_ORIGINS``. Requests without ``Origin`` (``parley call``, WHIP tools, curl) are
not from a browser page and pass: they hold no ambient credentials a page could ride on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

from signaling.errors import ApiError
from signaling.keys import SETTINGS

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def allowed_origins(setting: str) -> frozenset[str]:
    return frozenset(o.strip().rstrip("/").lower() for o in setting.split(",") if o.strip())


def origin_ok(request: web.Request, origin: str, extra: frozenset[str]) -> bool:
    """Same host:port as the request, or explicitly allowed."""
    if origin.rstrip("/").lower() in extra:
        return True
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc) and parts.netloc.lower() == request.host.lower()


@web.middleware
async def origin_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    origin = request.headers.get("Origin")
    guarded = request.method in STATE_CHANGING or request.path == "/ws"
    if origin is not None and guarded:
        extra = allowed_origins(request.app[SETTINGS].allowed_origins)
        if not origin_ok(request, origin, extra):
            raise ApiError(403, "bad_origin", "requests from that origin are not allowed (PARLEY_ALLOWED_ORIGINS)")
    return await handler(request)


def setup(app: web.Application) -> None:
    app.middlewares.append(origin_middleware)
