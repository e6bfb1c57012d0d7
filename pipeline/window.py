"""Short-term memory: the rolling, token-bounded window of a session's recent messages.

The window is what the prompt builder puts after the persona and the recalled memories. It
is keyed by session id, not by process, so a call can move to another worker or node: with
``PARLEY_REDIS_URL`` set the window lives in Redis (one list per session, with a TTL);
without it, a single node keeps it in a dict, written behind to Postgres (``session_windows``)
so a session resumed after a restart still has its recent messages.

The rules (trim oldest first to the token and message limits, always keep the newest;
replace the last assistant message with what the user actually heard on barge-in) are
written once, as pure functions over a list of entries. Each backend only supplies an atomic
read-modify-write: a dict assignment in-process, a WATCH/MULTI transaction in Redis so two
processes appending at once cannot lose a message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import RedisError, WatchError

from parley import deps
from parley.config import Settings
from pipeline.backends.base import Message
from storage import WindowRows

logger = logging.getLogger(__name__)

CountTokens = Callable[[str], int]
KEY_PREFIX = "parley:window:"
REDIS_TIMEOUT_S = 1.0  # a hung Redis must not hold a reply longer than this
STORE_TIMEOUT_S = 1.0  # nor a hung Postgres (reads of a window not in memory; writes are behind)
_STORE_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)
# Redis keys that belong to a user or session embed its id after this prefix; purge() relies
# on that convention to find every cache key of a deleted user.
PARLEY_PREFIX = "parley:"
_MAX_RETRIES = 20


def approx_tokens(text: str) -> int:
    """About four characters per token: the default when no tokenizer is at hand."""
    return max(1, len(text) // 4)


@dataclass(frozen=True, slots=True)
class WindowLimits:
    max_tokens: int = 2000
    max_messages: int = 40
    ttl_s: int = 6 * 3600


@dataclass(frozen=True, slots=True)
class _Entry:
    role: str
    content: str
    tokens: int

    def as_dict(self) -> dict[str, str | int]:
        return {"role": self.role, "content": self.content, "tokens": self.tokens}

    def encode(self) -> str:
        return json.dumps(self.as_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> _Entry:
        return cls(str(data["role"]), str(data["content"]), int(data["tokens"]))

    @classmethod
    def decode(cls, raw: str | bytes) -> _Entry:
        return cls.from_dict(json.loads(raw))


Update = Callable[[list[_Entry]], list[_Entry]]


def _trimmed(entries: list[_Entry], limits: WindowLimits) -> list[_Entry]:
    """The newest entries that fit the limits; the newest one is kept whatever its size."""
    kept, total = 0, 0
    for entry in reversed(entries):
        if kept and (total + entry.tokens > limits.max_tokens or kept >= limits.max_messages):
            break
        kept += 1
        total += entry.tokens
    return entries[len(entries) - kept :]


def _with_heard(entries: list[_Entry], heard: _Entry) -> list[_Entry]:
    """Replace the last assistant entry by ``heard``; drop it when nothing was heard."""
    for index in range(len(entries) - 1, -1, -1):
        if entries[index].role == "assistant":
            tail = [heard] if heard.content else []
            return entries[:index] + tail + entries[index + 1 :]
    return entries


def _without_last_turn(entries: list[_Entry]) -> list[_Entry]:
    for index in range(len(entries) - 1, -1, -1):
        if entries[index].role == "user":
            return entries[:index]
    return entries


class ConversationWindow(ABC):
    """Per-session recent history; every method is safe to call from concurrent tasks."""

    def __init__(self, limits: WindowLimits, count_tokens: CountTokens) -> None:
        self.limits = limits
        self._count_tokens = count_tokens

    async def load(self, session_id: str) -> list[Message]:
        """The window's messages, oldest first ([] for an unknown or expired session)."""
        return [Message(e.role, e.content) for e in await self._read(session_id)]

    async def append(self, session_id: str, message: Message) -> None:
        """Add ``message`` at the end, dropping the oldest messages beyond the limits."""
        entry = _Entry(message.role, message.content, self._count_tokens(message.content))
        await self._update(session_id, lambda entries: _trimmed([*entries, entry], self.limits))

    async def truncate_last(self, session_id: str, text: str) -> None:
        """Barge-in: the last assistant message becomes ``text``, what was actually heard."""
        heard = _Entry("assistant", text.strip(), self._count_tokens(text.strip()))
        await self._update(session_id, lambda entries: _with_heard(entries, heard))

    async def retract_turn(self, session_id: str) -> None:
        """Take back the last user message and what followed it: the user had not finished
        (they went on talking before the reply was heard), so the turn is asked again whole."""
        await self._update(session_id, _without_last_turn)

    @abstractmethod
    async def delete(self, session_id: str) -> None:
        """Forget the session's window."""

    @abstractmethod
    async def purge(self, ids: Iterable[str]) -> int:
        """Delete every cached key that embeds one of ``ids`` (privacy); returns the count."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections; idempotent."""

    @abstractmethod
    async def _read(self, session_id: str) -> list[_Entry]: ...

    @abstractmethod
    async def _update(self, session_id: str, update: Update) -> None:
        """Atomically replace the session's entries with ``update(entries)``."""


class MemoryWindow(ConversationWindow):
    """Single-process window: a dict of sessions, least recently used first, expired lazily."""

    def __init__(self, limits: WindowLimits, count_tokens: CountTokens) -> None:
        super().__init__(limits, count_tokens)
        self._sessions: OrderedDict[str, tuple[float, list[_Entry]]] = OrderedDict()

    def _expire(self) -> None:
        now = time.monotonic()
        while self._sessions:
            session_id, (deadline, _) = next(iter(self._sessions.items()))
            if deadline > now:
                break
            del self._sessions[session_id]

    async def _read(self, session_id: str) -> list[_Entry]:
        self._expire()
        _, entries = self._sessions.get(session_id, (0.0, []))
        return list(entries)

    async def _update(self, session_id: str, update: Update) -> None:
        entries = await self._read(session_id)
        self._sessions.pop(session_id, None)
        new = update(entries)
        if new:
            self._sessions[session_id] = (time.monotonic() + self.limits.ttl_s, new)

    async def delete(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    async def purge(self, ids: Iterable[str]) -> int:
        return sum(self._sessions.pop(i, None) is not None for i in ids)

    async def close(self) -> None:
        self._sessions.clear()


class DurableWindow(MemoryWindow):
    """Single-node window that outlives a restart: in-process, written behind to Postgres.

    Writes never hold a reply: each update schedules one write of the session's newest
    entries (updates made meanwhile ride along), and writes run one at a time so the newest
    snapshot lands last. A window not in memory (a session resumed after a restart) is read
    back from Postgres. While Postgres is down the window works in memory only.
    """

    def __init__(self, rows: WindowRows, limits: WindowLimits, count_tokens: CountTokens) -> None:
        super().__init__(limits, count_tokens)
        self._rows = rows
        self._dirty: set[str] = set()
        self._writes: set[asyncio.Task[None]] = set()
        self._write_lock = asyncio.Lock()

    async def _read(self, session_id: str) -> list[_Entry]:
        entries = await super()._read(session_id)
        if entries:
            return entries
        try:
            async with asyncio.timeout(STORE_TIMEOUT_S):
                stored = await self._rows.load(session_id, self.limits.ttl_s)
        except _STORE_ERRORS as exc:
            deps.failed("postgres", exc, "conversation windows are kept in-process only")
            return []
        deps.ok("postgres")
        return [_Entry.from_dict(item) for item in stored]

    async def _update(self, session_id: str, update: Update) -> None:
        await super()._update(session_id, update)
        if session_id in self._dirty:
            return  # the write already scheduled will take these entries too
        self._dirty.add(session_id)
        task = asyncio.create_task(self._write(session_id), name=f"window write {session_id[:8]}")
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, session_id: str) -> None:
        async with self._write_lock:
            self._dirty.discard(session_id)
            _, entries = self._sessions.get(session_id, (0.0, []))
            try:
                async with asyncio.timeout(STORE_TIMEOUT_S):
                    if entries:
                        await self._rows.save(session_id, [e.as_dict() for e in entries])
                    else:
                        await self._rows.delete([session_id])
            except _STORE_ERRORS as exc:
                deps.failed("postgres", exc, "conversation windows are kept in-process only")
                return
        deps.ok("postgres")

    async def delete(self, session_id: str) -> None:
        await self.purge([session_id])

    async def purge(self, ids: Iterable[str]) -> int:
        ids = list(ids)
        await self.flush()  # a write still on its way must not bring a window back
        removed = await super().purge(ids)
        return max(removed, await self._rows.delete(ids))

    async def flush(self) -> None:
        """Wait for the writes under way (shutdown, tests)."""
        while self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    async def close(self) -> None:
        try:
            async with asyncio.timeout(5 * STORE_TIMEOUT_S):
                await self.flush()
        except TimeoutError:
            logger.warning("conversation windows: %d writes unfinished at close", len(self._writes))
        await super().close()


class RedisWindow(ConversationWindow):
    """Window shared by every process on the Redis server: one list per session, with a TTL."""

    def __init__(
        self, client: aioredis.Redis, limits: WindowLimits, count_tokens: CountTokens
    ) -> None:
        super().__init__(limits, count_tokens)
        self._redis = client
        # While Redis is down the call goes on with an in-process window (this worker only);
        # what was said during the outage is not copied back when Redis returns.
        self._local = MemoryWindow(limits, count_tokens)

    async def _read(self, session_id: str) -> list[_Entry]:
        try:
            entries = await self._redis_read(session_id)
        except (RedisError, OSError, TimeoutError) as exc:
            deps.failed("redis", exc, "conversation windows are kept in-process")
            return await self._local._read(session_id)
        deps.ok("redis")
        return entries

    async def _update(self, session_id: str, update: Update) -> None:
        try:
            await self._redis_update(session_id, update)
        except (RedisError, OSError, TimeoutError) as exc:
            deps.failed("redis", exc, "conversation windows are kept in-process")
            await self._local._update(session_id, update)
            return
        deps.ok("redis")

    @staticmethod
    def key(session_id: str) -> str:
        return f"{KEY_PREFIX}{session_id}"

    async def _redis_read(self, session_id: str) -> list[_Entry]:
        raw = await self._redis.lrange(self.key(session_id), 0, -1)
        return [_Entry.decode(item) for item in raw]

    async def _redis_update(self, session_id: str, update: Update) -> None:
        key = self.key(session_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            for _ in range(_MAX_RETRIES):
                try:
                    await pipe.watch(key)
                    entries = [_Entry.decode(item) for item in await pipe.lrange(key, 0, -1)]
                    new = update(entries)
                    pipe.multi()
                    pipe.delete(key)
                    if new:
                        pipe.rpush(key, *(e.encode() for e in new))
                        pipe.expire(key, self.limits.ttl_s)
                    await pipe.execute()
                    return
                except WatchError:
                    logger.debug("window %s changed during update, retrying", session_id)
        raise RuntimeError(f"window {session_id}: too much contention, update abandoned")

    async def delete(self, session_id: str) -> None:
        await self._redis.delete(self.key(session_id))

    async def purge(self, ids: Iterable[str]) -> int:
        removed = 0
        for ident in ids:
            pattern = f"{PARLEY_PREFIX}*{_glob_escape(ident)}*"
            keys = [k async for k in self._redis.scan_iter(match=pattern)]
            if keys:
                removed += await self._redis.unlink(*keys)
        return removed

    async def close(self) -> None:
        await self._redis.aclose()


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def open_window(
    settings: Settings,
    limits: WindowLimits | None = None,
    count_tokens: CountTokens = approx_tokens,
    rows: WindowRows | None = None,
) -> ConversationWindow:
    """Redis-backed window when ``settings.redis_url`` is set; otherwise in-process, written
    behind to Postgres when ``rows`` (the store's ``session_windows``) is given.

    No I/O happens here; the Redis connection is made on first use.
    """
    limits = limits or WindowLimits()
    if settings.redis_url:
        client = aioredis.from_url(settings.redis_url, socket_timeout=REDIS_TIMEOUT_S,
                                   socket_connect_timeout=REDIS_TIMEOUT_S)
        return RedisWindow(client, limits, count_tokens)
    if rows is not None:
        return DurableWindow(rows, limits, count_tokens)
    return MemoryWindow(limits, count_tokens)
