"""Who serves what: the registry of live workers and the owner claims of calls and rooms.

A call's media lives inside one worker process (its UDP sockets, its peer connection), so
every later request about it — ``DELETE /whip/{id}``, a room join, a call event — must reach
that worker. Two kinds of keys make that possible, both expiring so a dead process vanishes
on its own instead of needing someone to clean up after it:

- ``parley:w:<worker>``: the worker's :class:`WorkerInfo` (internal URL, load), rewritten
  every second with a few seconds to live — a worker that stops refreshing stops existing;
- ``parley:own:<kind>:<id>``: the worker that owns the call or room (its id and internal URL,
  so a request can reach it even between two reads of the worker list), taken with
  ``SET NX EX`` and kept alive by its owner while the call lives.

:class:`RedisRegistry` shares them between the workers and nodes of a deployment;
:class:`LocalRegistry` is the same thing in one process, for a single worker without Redis.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import redis.asyncio as aioredis

WORKER_TTL_S = 5.0  # a worker that missed ~5 heartbeats is gone (placement only; claims carry addresses)
# A claim outlives its owner by at most this long. Generous on purpose: a worker whose loop
# stalls for seconds (an overloaded machine) must not lose its calls' claims, and a claim
# of a dead owner does no harm — forwarding to it fails, the registry says it is gone, and
# the request is answered 404 where it landed (signaling.routing).
CLAIM_TTL_S = 30.0
_PREFIX = "parley:"
_WORKERS = _PREFIX + "workers"


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """One worker as the others see it."""

    id: str
    node: str
    url: str | None  # internal base URL for proxied requests; None = not reachable (yet)
    load: float  # measured load, 1.0 = saturated (media_server.load)
    calls: int
    draining: bool

    def encode(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def decode(cls, raw: str | bytes) -> WorkerInfo:
        return cls(**json.loads(raw))


def claim_key(kind: str, ident: str) -> str:
    return f"{_PREFIX}own:{kind}:{ident}"


class Registry(ABC):
    """Workers and claims; every method is one or two round trips at most."""

    @abstractmethod
    async def announce(self, info: WorkerInfo) -> None:
        """Publish (or refresh) ``info`` for :data:`WORKER_TTL_S` seconds."""

    @abstractmethod
    async def withdraw(self, worker_id: str) -> None:
        """Remove a worker at once (clean shutdown)."""

    @abstractmethod
    async def workers(self) -> list[WorkerInfo]:
        """Every live worker of every node."""

    @abstractmethod
    async def claim(self, key: str, worker_id: str) -> bool:
        """Take ``key`` for ``worker_id`` if nobody holds it; True if it is ours now."""

    @abstractmethod
    async def refresh(self, keys: Iterable[str], worker_id: str) -> list[str]:
        """Extend our claims; returns the keys that are no longer ours."""

    @abstractmethod
    async def release(self, keys: Iterable[str], worker_id: str) -> None:
        """Drop our claims (others' claims on the same keys are left alone)."""

    @abstractmethod
    async def owner(self, key: str) -> str | None:
        """The worker id holding ``key``, if any."""

    async def close(self) -> None:  # noqa: B027 - only the Redis registry holds a connection
        """Let go of connections."""


class LocalRegistry(Registry):
    """The registry of a single worker process: plain dicts with deadlines."""

    def __init__(self) -> None:
        self._workers: dict[str, tuple[float, WorkerInfo]] = {}
        self._claims: dict[str, tuple[float, str]] = {}

    async def announce(self, info: WorkerInfo) -> None:
        self._workers[info.id] = (time.monotonic() + WORKER_TTL_S, info)

    async def withdraw(self, worker_id: str) -> None:
        self._workers.pop(worker_id, None)

    async def workers(self) -> list[WorkerInfo]:
        now = time.monotonic()
        return [info for deadline, info in self._workers.values() if deadline > now]

    def _holder(self, key: str) -> str | None:
        held = self._claims.get(key)
        return held[1] if held and held[0] > time.monotonic() else None

    async def claim(self, key: str, worker_id: str) -> bool:
        holder = self._holder(key)
        if holder is None:
            self._claims[key] = (time.monotonic() + CLAIM_TTL_S, worker_id)
        return holder in (None, worker_id)

    async def refresh(self, keys: Iterable[str], worker_id: str) -> list[str]:
        lost = []
        for key in keys:
            if self._holder(key) == worker_id:
                self._claims[key] = (time.monotonic() + CLAIM_TTL_S, worker_id)
            else:
                lost.append(key)
        return lost

    async def release(self, keys: Iterable[str], worker_id: str) -> None:
        for key in keys:
            if self._holder(key) == worker_id:
                del self._claims[key]

    async def owner(self, key: str) -> str | None:
        return self._holder(key)


# Extend / delete a claim only while it is still ours (an expired claim may have been retaken).
_REFRESH = """
local lost = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then redis.call('PEXPIRE', key, ARGV[2])
  else table.insert(lost, key) end
end
return lost
"""
_RELEASE = """
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then redis.call('DEL', key) end
end
return 0
"""


class RedisRegistry(Registry):
    """The registry shared by every worker of every node, in Redis."""

    def __init__(self, url: str) -> None:
        self._redis = aioredis.Redis.from_url(url, decode_responses=True, socket_timeout=2.0)
        self._refresh = self._redis.register_script(_REFRESH)
        self._release = self._redis.register_script(_RELEASE)

    @staticmethod
    def _worker_key(worker_id: str) -> str:
        return f"{_PREFIX}w:{worker_id}"

    async def announce(self, info: WorkerInfo) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(self._worker_key(info.id), info.encode(), px=int(WORKER_TTL_S * 1000))
            pipe.sadd(_WORKERS, info.id)
            await pipe.execute()

    async def withdraw(self, worker_id: str) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.delete(self._worker_key(worker_id))
            pipe.srem(_WORKERS, worker_id)
            await pipe.execute()

    async def workers(self) -> list[WorkerInfo]:
        ids = sorted(str(i) for i in await self._redis.smembers(_WORKERS))
        if not ids:
            return []
        raws = await self._redis.mget([self._worker_key(i) for i in ids])
        gone = [i for i, raw in zip(ids, raws, strict=True) if raw is None]
        if gone:  # expired workers leave the index too
            await self._redis.srem(_WORKERS, *gone)
        return [WorkerInfo.decode(raw) for raw in raws if raw is not None]

    async def claim(self, key: str, worker_id: str) -> bool:
        if await self._redis.set(key, worker_id, nx=True, px=int(CLAIM_TTL_S * 1000)):
            return True
        return bool(await self._redis.get(key) == worker_id)

    async def refresh(self, keys: Iterable[str], worker_id: str) -> list[str]:
        keys = list(keys)
        if not keys:
            return []
        lost = await self._refresh(keys=keys, args=[worker_id, int(CLAIM_TTL_S * 1000)])
        return [str(k) for k in lost]

    async def release(self, keys: Iterable[str], worker_id: str) -> None:
        keys = list(keys)
        if keys:
            await self._release(keys=keys, args=[worker_id])

    async def owner(self, key: str) -> str | None:
        value = await self._redis.get(key)
        return None if value is None else str(value)

    async def close(self) -> None:
        await self._redis.aclose()
