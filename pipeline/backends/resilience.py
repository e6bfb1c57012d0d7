"""Keeping a remote backend's failures from turning into dead air.

A voice agent cannot show a spinner: if the cloud LLM or TTS stalls, the caller hears
silence. Every remote stage is therefore wrapped by a :class:`Guard` that

* gives the backend a deadline for its *first* chunk (first token, first audio, the
  transcript) — ``PARLEY_FIRST_CHUNK_TIMEOUT_S``, 2 s by default — and a stall limit
  between later chunks (``PARLEY_STAGE_TIMEOUT_S``);
* retries, with exponential backoff and inside that deadline, only failures where the
  request never reached a model (connection refused/reset). A 4xx will fail the same way
  again, and a 5xx or timeout may already have cost tokens; once a chunk has been
  streamed a retry would repeat words the caller already heard;
* keeps a :class:`CircuitBreaker` per stage so a dead backend is skipped at once instead
  of costing every turn a deadline;
* switches to a fallback backend (the local one) when the primary fails before its first
  chunk. After the first chunk there is no fallback: the caller has heard half a
  sentence, so the error propagates and the agent ends the turn.
* holds the first chunk to the asking turn's deadline too, when it is sooner
  (:func:`answer_by`, set by the agent from ``PARLEY_FALLBACK_MS``), and tells the turn
  when it switches to the fallback, whose local model the turn then waits for.

Failures are counted once, where they are classified: the remote backends count their
HTTP errors as they build a :class:`BackendError` (:func:`backend_failure`); the guard
counts only what it decides itself (deadline, open circuit) or foreign exceptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from prometheus_client import Counter, Gauge

from parley.config import Settings
from pipeline.backends import registry
from pipeline.backends.base import LLM, STT, TTS, GenerationParams, Message, Vocabulary

logger = logging.getLogger(__name__)

T = TypeVar("T")

BACKEND_ERRORS = Counter(
    "parley_backend_errors_total", "Backend failures by stage and kind", ["stage", "kind"]
)
BACKEND_REQUESTS = Counter(
    "parley_backend_requests_total", "Attempts sent to a guarded (primary) backend", ["stage"]
)
FALLBACKS = Counter(
    "parley_backend_fallbacks_total", "Requests served by the fallback backend", ["stage", "kind"]
)
CIRCUIT_STATE = Gauge(
    "parley_circuit_state", "Circuit breaker per stage: 0 closed, 1 half-open, 2 open", ["stage"]
)

# Error kinds (the ``kind`` label). Only CONNECT is retried.
CONNECT = "connect"
TIMEOUT = "timeout"
RATE_LIMITED = "rate_limited"
CLIENT_ERROR = "status_4xx"
SERVER_ERROR = "status_5xx"
CIRCUIT_OPEN = "circuit_open"
PROTOCOL = "protocol"
CONFIG = "config"


@dataclass(frozen=True, slots=True)
class TurnDeadline:
    """What a turn asks of the guarded streams it opens (see :func:`answer_by`)."""

    first_chunk_by: float  # loop time
    on_fallback: Callable[[], None]  # the stream switched to its fallback backend


_ANSWER_BY: ContextVar[TurnDeadline | None] = ContextVar("parley_answer_by", default=None)


@contextlib.contextmanager
def answer_by(turn: TurnDeadline | None) -> Iterator[None]:
    """Guarded streams opened in this context produce their first chunk by the turn's
    deadline (or their own, if sooner) and report a switch to their fallback."""
    token = _ANSWER_BY.set(turn)
    try:
        yield
    finally:
        _ANSWER_BY.reset(token)


class BackendError(Exception):
    """A backend call failed. The message is safe to log and show: no key, no request body."""

    def __init__(self, stage: str, kind: str, detail: str = "", *, status: int | None = None):
        self.stage = stage
        self.kind = kind
        self.status = status
        http = f" (HTTP {status})" if status else ""
        super().__init__(f"{stage} backend {kind}{http}" + (f": {detail}" if detail else ""))

    @property
    def retryable(self) -> bool:
        """Only a failed connection is sure to have cost nothing and to be worth a retry."""
        return self.kind == CONNECT


def backend_failure(
    stage: str, kind: str, detail: str = "", *, status: int | None = None
) -> BackendError:
    """Count a failure (once, where it is classified) and build the exception to raise."""
    BACKEND_ERRORS.labels(stage, kind).inc()
    return BackendError(stage, kind, detail, status=status)


def _classify_foreign(stage: str, exc: Exception) -> BackendError | None:
    """Map a non-Parley exception from a backend to a BackendError, or None to let it fly."""
    if isinstance(exc, BackendError):
        return exc
    if isinstance(exc, TimeoutError):
        return backend_failure(stage, TIMEOUT, type(exc).__name__)
    if isinstance(exc, OSError):  # ConnectionRefusedError, ConnectionResetError, ...
        return backend_failure(stage, CONNECT, type(exc).__name__)
    return None


@dataclass(frozen=True, slots=True)
class Policy:
    """Deadlines and retry budget of one stage."""

    first_chunk_timeout_s: float = 2.0
    idle_timeout_s: float = 10.0
    retries: int = 2
    backoff_s: float = 0.1

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        """Read the ``PARLEY_*`` knobs (``getattr`` so this works before they are declared)."""
        return cls(
            first_chunk_timeout_s=float(getattr(settings, "first_chunk_timeout_s", 2.0)),
            idle_timeout_s=float(getattr(settings, "stage_timeout_s", 10.0)),
            retries=int(getattr(settings, "backend_retries", 2)),
        )


class CircuitBreaker:
    """Closed → open after ``failures`` consecutive failures → half-open after ``cooldown_s``.

    Half-open lets exactly one probe through; its success closes the circuit, its failure
    re-opens it for another cool-down. I/O-free and clock-injectable so the state machine is
    tested without sleeping.
    """

    CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"
    _GAUGE = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}

    def __init__(
        self,
        stage: str,
        *,
        failures: int = 5,
        cooldown_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stage = stage
        self.failures = max(1, failures)
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._consecutive = 0
        self._opened_at = 0.0
        self._probing = False
        self._set(self.CLOSED)

    @property
    def state(self) -> str:
        return self._state

    def allow(self) -> bool:
        """May a request go to the backend now? In half-open, only one probe at a time."""
        if self._state == self.OPEN and self._clock() - self._opened_at >= self.cooldown_s:
            self._set(self.HALF_OPEN)
        if self._state == self.CLOSED:
            return True
        if self._state == self.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def record_success(self) -> None:
        self._consecutive = 0
        self._probing = False
        self._set(self.CLOSED)

    def record_failure(self) -> None:
        self._consecutive += 1
        self._probing = False
        if self._state == self.HALF_OPEN or self._consecutive >= self.failures:
            self._opened_at = self._clock()
            if self._state != self.OPEN:
                logger.warning("%s: circuit open after %d failures", self.stage, self._consecutive)
            self._set(self.OPEN)

    def record_abandoned(self) -> None:
        """The caller gave up (barge-in) before an outcome: free the probe slot, no verdict."""
        self._probing = False

    def _set(self, state: str) -> None:
        self._state = state
        CIRCUIT_STATE.labels(self.stage).set(self._GAUGE[state])


async def _once(call: Callable[[], Awaitable[T]]) -> AsyncGenerator[T, None]:
    """A one-item stream, so request/response calls share the streaming guard."""
    yield await call()


class Guard:
    """Deadlines, connect retries and a circuit breaker around one stage's primary backend."""

    def __init__(
        self, stage: str, policy: Policy | None = None, breaker: CircuitBreaker | None = None
    ):
        self.stage = stage
        self.policy = policy or Policy()
        self.breaker = breaker or CircuitBreaker(stage)

    @classmethod
    def from_settings(cls, stage: str, settings: Settings) -> Guard:
        breaker = CircuitBreaker(
            stage,
            failures=int(getattr(settings, "circuit_failures", 5)),
            cooldown_s=float(getattr(settings, "circuit_cooldown_s", 30.0)),
        )
        return cls(stage, Policy.from_settings(settings), breaker)

    async def stream(
        self,
        primary: Callable[[], AsyncGenerator[T, None]],
        fallback: Callable[[], AsyncGenerator[T, None]] | None = None,
    ) -> AsyncGenerator[T, None]:
        """Items of ``primary()``; of ``fallback()`` if the primary fails before its first item.

        However the consumer leaves (barge-in closes it early), the backend stream in use is
        closed before this generator finishes closing: that is what stops the HTTP response
        or the local model's thread.
        """
        try:
            it, head = await self._open(primary)
        except BackendError as exc:
            if fallback is None:
                raise
            FALLBACKS.labels(self.stage, exc.kind).inc()
            logger.warning("%s: %s; answering with the fallback backend", self.stage, exc)
            turn = _ANSWER_BY.get()
            if turn is not None:
                turn.on_fallback()
        else:
            async with contextlib.aclosing(it), contextlib.aclosing(self._rest(it)) as rest:
                for item in head:
                    yield item
                async for item in rest:
                    yield item
            return
        async with contextlib.aclosing(fallback()) as items:  # outside the except clause
            async for item in items:
                yield item

    async def call(
        self,
        primary: Callable[[], Awaitable[T]],
        fallback: Callable[[], Awaitable[T]] | None = None,
    ) -> T:
        """Request/response form of :meth:`stream` (transcripts, moderation, embeddings)."""
        second = (lambda: _once(fallback)) if fallback is not None else None
        async with contextlib.aclosing(self.stream(lambda: _once(primary), second)) as items:
            async for item in items:
                return item
        raise backend_failure(self.stage, PROTOCOL, "empty response")

    async def _open(
        self, primary: Callable[[], AsyncGenerator[T, None]]
    ) -> tuple[AsyncGenerator[T, None], list[T]]:
        """Start the primary and wait for its first item under the first-chunk deadline."""
        if not self.breaker.allow():
            raise backend_failure(self.stage, CIRCUIT_OPEN)
        settled = False
        loop = asyncio.get_running_loop()
        own = loop.time() + self.policy.first_chunk_timeout_s
        turn = None if (asking := _ANSWER_BY.get()) is None else asking.first_chunk_by
        try:
            async with asyncio.timeout_at(own if turn is None else min(own, turn)):
                opened = await self._first_with_retries(primary)
            settled = True
            self.breaker.record_success()
            return opened
        except TimeoutError:
            settled = True
            self.breaker.record_failure()
            detail = (f"no first chunk within {self.policy.first_chunk_timeout_s:.1f} s" if turn is None or own <= turn
                      else "no first chunk before the turn's reply deadline")
            raise backend_failure(self.stage, TIMEOUT, detail) from None
        except BackendError:
            settled = True
            self.breaker.record_failure()
            raise
        finally:
            if not settled:
                self.breaker.record_abandoned()

    async def _first_with_retries(
        self, primary: Callable[[], AsyncGenerator[T, None]]
    ) -> tuple[AsyncGenerator[T, None], list[T]]:
        attempt = 0
        while True:
            BACKEND_REQUESTS.labels(self.stage).inc()
            it = primary()
            try:
                return it, [await anext(it)]
            except StopAsyncIteration:
                return it, []
            except BaseException as exc:  # cancelled too: the iterator must close its stream
                await it.aclose()
                error = _classify_foreign(self.stage, exc) if isinstance(exc, Exception) else None
                if error is None:
                    raise
                if not error.retryable or attempt >= self.policy.retries:
                    raise error from None
            delay = self.policy.backoff_s * 2**attempt
            attempt += 1
            logger.info("%s: connection failed, retry %d in %.2f s", self.stage, attempt, delay)
            await asyncio.sleep(delay)

    async def _rest(self, it: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
        """The items after the first, each under the stall limit; no retry, no fallback."""
        while True:
            try:
                async with asyncio.timeout(self.policy.idle_timeout_s):
                    item = await anext(it)
            except StopAsyncIteration:
                return
            except TimeoutError:
                self.breaker.record_failure()
                detail = f"stream stalled for {self.policy.idle_timeout_s:.1f} s"
                raise backend_failure(self.stage, TIMEOUT, detail) from None
            except Exception as exc:
                error = _classify_foreign(self.stage, exc)
                if error is None:
                    raise
                self.breaker.record_failure()
                raise error from None
            yield item


class FallbackLLM(LLM):
    """An LLM that answers from ``fallback`` when ``primary`` cannot start in time."""

    def __init__(self, primary: LLM, fallback: LLM | None, guard: Guard) -> None:
        self.primary, self.fallback, self.guard = primary, fallback, guard
        self.name = f"{primary.name}|{fallback.name if fallback else '-'}"

    def stream(
        self, messages: list[Message], params: GenerationParams
    ) -> AsyncGenerator[str, None]:
        fallback = self.fallback
        second = (lambda: fallback.stream(messages, params)) if fallback else None
        return self.guard.stream(lambda: self.primary.stream(messages, params), second)

    def count_tokens(self, text: str) -> int:
        return self.primary.count_tokens(text)


class FallbackTTS(TTS):
    """A TTS that speaks with ``fallback`` when ``primary`` has no audio by the deadline."""

    def __init__(self, primary: TTS, fallback: TTS | None, guard: Guard) -> None:
        self.primary, self.fallback, self.guard = primary, fallback, guard
        self.name = f"{primary.name}|{fallback.name if fallback else '-'}"

    def synthesize(
        self, text: str, *, voice: str | None = None, speed: float = 1.0
    ) -> AsyncGenerator[np.ndarray, None]:
        fallback = self.fallback
        second = (lambda: fallback.synthesize(text, voice=voice, speed=speed)) if fallback else None
        return self.guard.stream(
            lambda: self.primary.synthesize(text, voice=voice, speed=speed), second
        )


class FallbackSTT(STT):
    """An STT that transcribes with ``fallback`` when ``primary`` fails or is late."""

    def __init__(self, primary: STT, fallback: STT | None, guard: Guard) -> None:
        self.primary, self.fallback, self.guard = primary, fallback, guard
        self.name = f"{primary.name}|{fallback.name if fallback else '-'}"

    async def transcribe(self, pcm: np.ndarray, *, final: bool = True,
                         vocabulary: Vocabulary | None = None) -> str:
        fallback = self.fallback
        second = (lambda: fallback.transcribe(pcm, final=final, vocabulary=vocabulary)) if fallback else None
        return await self.guard.call(lambda: self.primary.transcribe(pcm, final=final, vocabulary=vocabulary),
                                     second)


_WRAPPERS: dict[str, type[FallbackLLM] | type[FallbackTTS] | type[FallbackSTT]] = {
    "llm": FallbackLLM,
    "tts": FallbackTTS,
    "stt": FallbackSTT,
}


_built: dict[tuple[Any, ...], Any] = {}


def build_stage(kind: str, settings: Settings) -> Any:
    """The process-wide backend the agent should use for ``kind`` ("llm" | "stt" | "tts").

    A local backend is returned as is (nothing remote to guard). A remote one is wrapped in
    its Fallback* guard, with the local backend — loaded now, not on the first failure,
    so falling back does not add a model load to the dead air — unless
    ``PARLEY_FALLBACK=none`` or the local backend cannot be loaded. Wrappers are cached
    like registry instances: the circuit breaker must see every call's failures.
    """
    name = getattr(settings, kind)
    fallback_name = getattr(settings, "fallback", "local") or "none"
    key = (fallback_name, *registry.instance_key(kind, name, settings))
    if key not in _built:
        _built[key] = _wrap(kind, name, fallback_name, settings)
    return _built[key]


def forget_stage(stage: Any) -> None:
    """Drop a built stage from the cache (its remote client is being closed)."""
    for key in [k for k, v in _built.items() if v is stage]:
        del _built[key]


def _wrap(kind: str, name: str, fallback_name: str, settings: Settings) -> Any:
    primary = registry.get(kind, name, settings)
    if name == "local":
        return primary
    fallback = None
    if fallback_name != "none":
        try:
            fallback = registry.get(kind, fallback_name, settings)
        except Exception as exc:  # a missing model must not stop the remote path from working
            logger.warning("%s: no fallback backend %r (%s)", kind, fallback_name, exc)
    return _WRAPPERS[kind](primary, fallback, Guard.from_settings(kind, settings))
