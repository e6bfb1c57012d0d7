"""API errors: every failure a client can cause becomes a 4xx ``{"error": {code, message}}``.

Handlers raise :class:`ApiError`; the middleware turns it — and aiohttp's own HTTP errors
(404, 405, 413, …) — into that JSON shape, and turns anything unexpected into a logged 500
with no internals in the body.
"""

from __future__ import annotations

import codecs
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import redis.exceptions
from aiohttp import web

from parley import deps, metrics

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An error answered to the client as ``status`` with a stable ``code``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers  # e.g. Retry-After on a 429 or 503


def error_response(status: int, code: str, message: str, headers: Any = None) -> web.Response:
    metrics.HTTP_ERRORS.labels(code).inc()
    body = json.dumps({"error": {"code": code, "message": message}})
    return web.Response(status=status, text=body, content_type="application/json", headers=headers)


_HTTP_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 409: "conflict", 413: "body_too_large", 415: "unsupported_media_type",
    429: "rate_limited",
}


#: a backing service is down or unreachable (not a bug in the request or in Parley)
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown (pg_terminate_backend), "cannot connect now"
    redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
)


def _dependency_of(exc: BaseException) -> str:
    """Which service failed: a refused socket inside asyncpg is still Postgres (parley.deps)."""
    return deps.name_of(exc, "a service")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, headers=exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(exc.status, code, exc.reason, headers=allow)
    except UNAVAILABLE as exc:  # Postgres/Redis down or restarting: the client may retry
        deps.failed(_dependency_of(exc), exc, "requests that need it answer 503")
        return error_response(503, "unavailable", "a backing service is unavailable; try again shortly",
                              headers={"Retry-After": "5"})
    except Exception:
        logger.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal", "internal server error")


#: charsets whose bytes we accept (SDP is UTF-8 by RFC 8866; JSON by RFC 8259)
TEXT_CHARSETS = frozenset({"utf-8", "ascii"})


def _charset_ok(charset: str | None) -> bool:
    if charset is None:
        return True
    try:
        return codecs.lookup(charset).name in TEXT_CHARSETS
    except LookupError:
        return False


async def read_text(request: web.Request) -> str:
    """The body as text, decoded strictly: 415 for a charset we do not take, 400 for bad bytes.

    aiohttp's ``request.text()`` raises ``LookupError`` for ``charset=nonsense`` (a 500), so
    the bytes are read and decoded here.
    """
    charset = request.charset
    if not _charset_ok(charset):
        raise ApiError(415, "unsupported_charset", f"charset {str(charset)[:40]!r} is not accepted; send UTF-8")
    raw = await request.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "bad_encoding", f"body is not valid UTF-8 (byte {exc.start})") from exc


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or a 400/413/415 ApiError saying what is wrong."""
    if request.content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "send Content-Type: application/json")
    text = await read_text(request)
    try:
        body = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "bad_json", f"body is not valid JSON: {str(exc)[:120]}") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "bad_json", "body must be a JSON object")
    return body
