"""Token-bucket rate limits per client address and per user, on the routes that cost something.

Classes of request (``sessions``, ``offers``, ``whip``, ``ws``, ``memory``) each get a bucket
per address (``PARLEY_RATE_LIMIT`` per minute) and, when the request carries a valid session
token, one per user (``PARLEY_USER_RATE_LIMIT``). Over the limit: ``429`` with ``Retry-After``.

With ``PARLEY_REDIS_URL`` the buckets live in Redis (one atomic Lua script per check), so
every worker and node shares them; without it they are in-process. When Redis stops
answering, checks fall back to the in-process buckets (logged once per outage and counted,
by :mod:`parley.deps`) rather than refusing or waving
everything through; the shared buckets are used again as soon as Redis answers.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError

from parley import deps, metrics
from parley.config import Settings
from signaling.errors import ApiError
from signaling.keys import SETTINGS, TOKENS

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_LOCAL_KEYS = 100_000  # the in-process table is pruned beyond this (a spoofing flood)
REDIS_TIMEOUT_S = 0.25

#: (method, path test) -> request class; memory writes are POST /api/sessions/{id}/memories
ROUTES: tuple[tuple[str, Callable[[str], bool], str], ...] = (
    ("POST", lambda p: p == "/api/sessions", "sessions"),
    ("POST", lambda p: p == "/api/offer", "offers"),
    ("POST", lambda p: p == "/whip", "whip"),
    ("GET", lambda p: p == "/ws", "ws"),
    ("POST", lambda p: p.startswith("/api/sessions/") and p.endswith("/memories"), "memory"),
)

_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local v = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(v[1]) or burst
local ts = tonumber(v[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""


@dataclass(slots=True)
class _Bucket:
    tokens: float
    ts: float


class LocalBuckets:
    """In-process token buckets: ``take`` returns 0 when allowed, else seconds to wait."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._buckets: dict[str, _Bucket] = {}
        self._clock = clock

    def take(self, key: str, per_minute: int) -> float:
        rate, burst, now = per_minute / 60.0, float(per_minute), self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_LOCAL_KEYS:
                self._prune(now)
            bucket = self._buckets[key] = _Bucket(burst, now)
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.ts) * rate)
        bucket.ts = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / rate

    def _prune(self, now: float) -> None:
        """Drop buckets idle long enough to be full again (they hold no state worth keeping)."""
        full_after = 60.0
        self._buckets = {k: b for k, b in self._buckets.items() if now - b.ts < full_after}


class RateLimiter:
    """Per-address and per-user buckets, in Redis when configured."""

    def __init__(self, settings: Settings, redis: aioredis.Redis | None = None) -> None:
        self.per_ip = settings.rate_limit
        self.per_user = settings.user_rate_limit
        self._redis = redis
        self._script = redis.register_script(_LUA) if redis is not None else None
        self._local = LocalBuckets()

    async def check(self, kind: str, ip: str, user_id: str | None) -> None:
        """Take one token of ``kind`` for ``ip`` (and ``user_id``); 429 ApiError when empty."""
        checks = [(f"ip:{ip}", self.per_ip)] if self.per_ip > 0 else []
        if user_id and self.per_user > 0:
            checks.append((f"user:{user_id}", self.per_user))
        for who, limit in checks:
            wait = await self._take(f"parley:rl:{kind}:{who}", limit)
            if wait > 0:
                metrics.RATE_LIMITED.labels(kind).inc()
                retry = max(1, math.ceil(wait))
                raise ApiError(429, "rate_limited", f"too many {kind} requests; retry in {retry} s",
                               headers={"Retry-After": str(retry)})

    async def _take(self, key: str, per_minute: int) -> float:
        if self._script is None:
            return self._local.take(key, per_minute)
        try:
            wait = float(await self._script(keys=[key], args=[per_minute / 60.0, per_minute]))
        except (RedisError, OSError, TimeoutError) as exc:
            deps.failed("redis", exc, "rate limits use in-process buckets")
            return self._local.take(key, per_minute)
        deps.ok("redis")
        return wait

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()


RATE_LIMITER = web.AppKey("rate_limiter", RateLimiter)


def request_kind(request: web.Request) -> str | None:
    for method, matches, kind in ROUTES:
        if request.method == method and matches(request.path):
            return kind
    return None


def client_ip(request: web.Request) -> str:
    """The peer address (proxies are not trusted: X-Forwarded-For is client-controlled)."""
    return request.remote or "unknown"


def _user_of(request: web.Request) -> str | None:
    """The user of a valid token, if any; a bad token is left for the handler to refuse."""
    try:
        claims = request.app[TOKENS].from_request(request, required=False)
    except ApiError:
        return None
    return claims.user_id if claims else None


@web.middleware
async def rate_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    kind = request_kind(request)
    limiter = request.app.get(RATE_LIMITER)
    if kind is not None and limiter is not None:
        await limiter.check(kind, client_ip(request), _user_of(request))
    return await handler(request)


async def rate_limit_ctx(app: web.Application) -> AsyncIterator[None]:
    """The app's limiter, on Redis when ``PARLEY_REDIS_URL`` is set."""
    settings = app[SETTINGS]
    redis = None
    if settings.redis_url:
        redis = aioredis.from_url(settings.redis_url, socket_timeout=REDIS_TIMEOUT_S,
                                  socket_connect_timeout=REDIS_TIMEOUT_S)
    app[RATE_LIMITER] = limiter = RateLimiter(settings, redis)
    yield
    await limiter.close()


def setup(app: web.Application) -> None:
    """Install the middleware (after the error middleware) and the limiter's lifecycle."""
    app.middlewares.append(rate_limit_middleware)
    app.cleanup_ctx.append(rate_limit_ctx)
