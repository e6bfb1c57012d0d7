"""What the models cost: token and audio usage per turn, call, user and deployment.

Backends report usage as it happens (:func:`record_tokens`, :func:`record_audio`): the
Prometheus counters always move, and every :func:`track` context active in the calling
task (a call, a turn inside it) accumulates the same numbers. A context variable carries
the accumulators because backend instances are shared by all calls and the stage
interfaces (``LLM.stream`` …) have no room for a user id; tasks started inside a
``track()`` block inherit it.

:class:`Budget` turns the numbers into a daily limit per deployment and per user, kept in
process or — with ``PARLEY_REDIS_URL`` — in Redis, so all nodes share one count. When a
budget is spent the agent speaks :func:`budget_notice` instead of calling the model.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import Counter, Gauge

from parley.config import Settings

logger = logging.getLogger(__name__)

LLM_TOKENS = Counter("parley_llm_tokens_total", "LLM tokens used", ["direction"])
AUDIO_SECONDS = Counter("parley_audio_seconds_total", "Audio seconds processed", ["stage"])
BUDGET_USED = Gauge(
    "parley_budget_used_ratio", "Share of today's deployment token budget spent (0 = unlimited)"
)
BUDGET_DENIED = Counter(
    "parley_budget_denied_total", "Turns refused because a daily token budget is spent", ["scope"]
)

_KEY_TTL_S = 2 * 86400  # a day's counter outlives its day, so late charges still land


@dataclass(slots=True)
class Usage:
    """Usage of one turn or call. Audio seconds: ``stt`` heard, ``tts`` spoken."""

    input_tokens: int = 0
    output_tokens: int = 0
    stt_seconds: float = 0.0
    tts_seconds: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def add(self, other: Usage) -> None:
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.stt_seconds += other.stt_seconds
        self.tts_seconds += other.tts_seconds


_active: ContextVar[tuple[Usage, ...]] = ContextVar("parley_usage", default=())


@contextlib.contextmanager
def track() -> Iterator[Usage]:
    """Collect the usage backends record in this context; nests (call ⊃ turn)."""
    usage = Usage()
    token = _active.set((*_active.get(), usage))
    try:
        yield usage
    finally:
        _active.reset(token)


def record_tokens(input_tokens: int, output_tokens: int) -> None:
    """One LLM request's tokens (from the API's usage report, or an estimate)."""
    LLM_TOKENS.labels("input").inc(input_tokens)
    LLM_TOKENS.labels("output").inc(output_tokens)
    for usage in _active.get():
        usage.input_tokens += input_tokens
        usage.output_tokens += output_tokens


def record_audio(stage: str, seconds: float) -> None:
    """Audio sent to STT (``stage="stt"``) or received from TTS (``"tts"``)."""
    AUDIO_SECONDS.labels(stage).inc(seconds)
    for usage in _active.get():
        if stage == "stt":
            usage.stt_seconds += seconds
        else:
            usage.tts_seconds += seconds


def budget_notice() -> str:
    """What the agent says instead of answering when a daily budget is spent."""
    return (
        "I'm sorry, I have used up my conversation allowance for today. "
        "Please come back tomorrow and we can continue."
    )


class CounterStore(Protocol):
    """Where daily counters live: in process, or shared between nodes."""

    async def get(self, key: str) -> int: ...
    async def incr(self, key: str, amount: int, ttl_s: int) -> int: ...
    async def close(self) -> None: ...


class MemoryStore:
    """Counters in this process (one node): expired keys are dropped on write."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._values: dict[str, tuple[int, float]] = {}

    async def get(self, key: str) -> int:
        value, expires = self._values.get(key, (0, 0.0))
        return value if expires > self._clock() else 0

    async def incr(self, key: str, amount: int, ttl_s: int) -> int:
        now = self._clock()
        self._values = {k: v for k, v in self._values.items() if v[1] > now}
        value = await self.get(key) + amount
        self._values[key] = (value, now + ttl_s)
        return value

    async def close(self) -> None:
        self._values.clear()


class RedisStore:
    """Counters in Redis (INCRBY + EXPIRE in one transaction), shared by every node."""

    def __init__(self, url: str) -> None:
        import redis.asyncio as redis  # imported here: single-node setups need no Redis

        self._redis: Any = redis.Redis.from_url(url)

    async def get(self, key: str) -> int:
        raw = await self._redis.get(key)
        return int(raw) if raw is not None else 0

    async def incr(self, key: str, amount: int, ttl_s: int) -> int:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incrby(key, amount)
            pipe.expire(key, ttl_s)
            value, _ = await pipe.execute()
        return int(value)

    async def close(self) -> None:
        await self._redis.aclose()


def _utc_day() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%d")


class Budget:
    """Daily token budgets per deployment and per user (0 = unlimited), keyed by UTC day.

    A store outage must not mute the agent: :meth:`check` then allows the turn (and logs),
    because the budget is a cost guard, not a security boundary.
    """

    def __init__(
        self,
        *,
        daily_tokens: int = 0,
        user_daily_tokens: int = 0,
        store: CounterStore | None = None,
        today: Callable[[], str] = _utc_day,
    ) -> None:
        self.daily_tokens = daily_tokens
        self.user_daily_tokens = user_daily_tokens
        self.store: CounterStore = store or MemoryStore()
        self._today = today

    @classmethod
    def from_settings(cls, settings: Settings) -> Budget:
        redis_url = getattr(settings, "redis_url", "")
        return cls(
            daily_tokens=int(getattr(settings, "daily_token_budget", 0)),
            user_daily_tokens=int(getattr(settings, "user_daily_token_budget", 0)),
            store=RedisStore(redis_url) if redis_url else MemoryStore(),
        )

    def _keys(self, user_id: str) -> tuple[str, str]:
        day = self._today()
        return f"parley:tokens:{day}:all", f"parley:tokens:{day}:user:{user_id}"

    async def spent(self, user_id: str) -> tuple[int, int]:
        """Tokens spent today by (the deployment, this user)."""
        all_key, user_key = self._keys(user_id)
        return await self.store.get(all_key), await self.store.get(user_key)

    async def check(self, user_id: str) -> bool:
        """May this user's next turn call the model?"""
        if not self.daily_tokens and not self.user_daily_tokens:
            return True
        try:
            total, mine = await self.spent(user_id)
        except Exception as exc:  # store unreachable: fail open, see class docstring
            logger.warning("budget store unavailable, allowing the turn: %s", type(exc).__name__)
            return True
        self._publish(total)
        limits = (("deployment", self.daily_tokens, total), ("user", self.user_daily_tokens, mine))
        for scope, limit, used in limits:
            if limit and used >= limit:
                BUDGET_DENIED.labels(scope).inc()
                logger.info("%s daily token budget spent (%d/%d)", scope, used, limit)
                return False
        return True

    async def charge(self, user_id: str, usage: Usage) -> None:
        """Add a turn's tokens to today's deployment and user counters."""
        if usage.total_tokens <= 0:
            return
        all_key, user_key = self._keys(user_id)
        try:
            total = await self.store.incr(all_key, usage.total_tokens, _KEY_TTL_S)
            await self.store.incr(user_key, usage.total_tokens, _KEY_TTL_S)
        except Exception as exc:  # a cost guard must not end the call; the log says why
            logger.warning("budget store unavailable, usage not charged: %s", type(exc).__name__)
            return
        self._publish(total)

    def _publish(self, total: int) -> None:
        BUDGET_USED.set(total / self.daily_tokens if self.daily_tokens else 0.0)

    async def close(self) -> None:
        await self.store.close()
