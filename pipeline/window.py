"""Short-term memory: the rolling, token-bounded window of a session's recent messages.

The window is what the prompt builder puts after the persona and the recalled memories. It
is keyed by session id, not by process, so a call can move to another worker or node: with
``PARLEY_REDIS_URL`` set the window lives in Redis (one list per session, with a TTL);
without it, a single node keeps it in a dict.

The rules (trim oldest first to the token and message limits, always keep the newest;
replace the last assistant message with what the user actually heard on barge-in) are
written once, as pure functions over a list of entries. Each backend only supplies an atomic
read-modify-write: a dict assignment in-process, a WATCH/MULTI transaction in Redis so two
processes appending at once cannot lose a message.
"""

from __future__ import annotations

import json
import logging
import re
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from parley.config import Settings
from pipeline.llm import Message

logger = logging.getLogger(__name__)

CountTokens = Callable[[str], int]
KEY_PREFIX = "parley:window:"
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

    def encode(self) -> str:
        return json.dumps({"role": self.role, "content": self.content, "tokens": self.tokens})

    @classmethod
    def decode(cls, raw: str | bytes) -> _Entry:
        data = json.loads(raw)
        return cls(data["role"], data["content"], int(data["tokens"]))


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


class RedisWindow(ConversationWindow):
    """Window shared by every process on the Redis server: one list per session, with a TTL."""

    def __init__(
        self, client: aioredis.Redis, limits: WindowLimits, count_tokens: CountTokens
    ) -> None:
        super().__init__(limits, count_tokens)
        self._redis = client

    @staticmethod
    def key(session_id: str) -> str:
        return f"{KEY_PREFIX}{session_id}"

    async def _read(self, session_id: str) -> list[_Entry]:
        raw = await self._redis.lrange(self.key(session_id), 0, -1)
        return [_Entry.decode(item) for item in raw]

    async def _update(self, session_id: str, update: Update) -> None:
        key = self.key(session_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            for _ in range(_MAX_RETRIES):
                try:
                    await pipe.watch(key)
                    entries = [_Entry.decode(item) for item in await pipe.lrange(key, 0, -1)]
                    new = update(entries)
                    pipe.multi()  # type: ignore[no-untyped-call]  # untyped in redis-py
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
) -> ConversationWindow:
    """Redis-backed window when ``settings.redis_url`` is set, in-process otherwise.

    No I/O happens here; the Redis connection is made on first use.
    """
    limits = limits or WindowLimits()
    if settings.redis_url:
        return RedisWindow(aioredis.from_url(settings.redis_url), limits, count_tokens)
    return MemoryWindow(limits, count_tokens)
