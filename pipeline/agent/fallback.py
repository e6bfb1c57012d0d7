"""A turn the agent cannot answer still gets a spoken answer: a short apology.

The backend guards (``pipeline.backends.resilience``) switch a failing remote stage to the
local one. That leaves the turns where nothing can answer: the fallback is off
(``PARLEY_FALLBACK=none``) or fails too, a local backend raises, or a backend hangs with
no guard to time it out (a local model). Without this module such a turn ends with an
``error`` event the caller never hears and, after the filler, silence.

:class:`TurnBudget` holds one turn to ``PARLEY_FALLBACK_MS``: by then, counted from the end
of the user's turn, a *remote* LLM must have started the reply (a first token), having had
at least ``MIN_LLM_WAIT_S``. If it has not, or as soon as a stage fails, the reply is
given up and the agent plays an apology synthesized at start-up by the local TTS
(``Services.apology``), so it plays at once even when the TTS is what failed. The remote
stream's guard gets the same deadline (:func:`pipeline.backends.resilience.answer_by`); the
agent's own trails it by ``GRACE_S``, so the guard times the backend out (and falls back,
if it has a fallback) and its circuit breaker learns. A local model — configured, or the
guard's fallback — is not slow the way a network is: on a loaded CPU its first token can
take seconds. It is only held to ``PARLEY_STAGE_TIMEOUT_S``: silent that long, it has hung.

Each failure is counted (``parley_reply_fallbacks_total{stage,reason}``, and the failed
stage in ``parley_dependency_errors_total``) and logged once per outage through
:mod:`parley.deps`, with the call that first met it. Nothing is switched off: the next turn
tries the backends again, so service resumes by itself when they answer ("llm is back").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import Counter

from parley import deps, metrics
from pipeline.backends.resilience import TIMEOUT, BackendError, TurnDeadline

logger = logging.getLogger(__name__)

REPLY_FALLBACKS = Counter(
    "parley_reply_fallbacks_total", "Turns answered with the spoken apology, by failed stage and reason",
    ["stage", "reason"],
)

ERROR = "error"
GRACE_S = 0.1  # the agent's deadline trails the guards' so that a guarded stage times out first
#: the LLM always gets this long for its first token, so a slow transcript (a loaded CPU)
#: cannot use up the turn's budget and turn a healthy reply into an apology
MIN_LLM_WAIT_S = 1.0

#: failures of a backend or the network, reported per outage; anything else is a bug and
#: is logged with its traceback every time
_OUTAGES: tuple[type[BaseException], ...] = (BackendError, TimeoutError, OSError)


@dataclass(frozen=True, slots=True)
class TurnFailure:
    """Why a turn could not be answered: the stage that failed, ``error`` or ``timeout``."""

    stage: str
    reason: str
    error: BaseException


class TurnBudget:
    """One turn's deadline: the reply starts in time, or :meth:`run` says why not.

    The deadline binds from the moment the LLM is asked (:meth:`asking_llm`): the stages
    before it have deadlines of their own (a guarded STT's first-chunk timeout, moderation's
    and recall's), and a transcript that is merely slow must not cost the reply. An LLM
    asked before the turn ended (a speculative reply) and still silent at :meth:`run` gets
    ``hang_s``, like a local one.
    """

    def __init__(self, budget_s: float, hang_s: float) -> None:
        self.budget_s = budget_s
        self.hang_s = hang_s  # a local model silent this long has hung
        self._limit: float | None = None  # loop time: end of turn + budget, while a turn runs
        self._timeout: asyncio.Timeout | None = None
        self._asked_early = False  # the LLM was asked before :meth:`run` (a speculative reply)
        self._started = False

    def started(self) -> None:
        """The reply has begun (first token or first audio): no deadline any more."""
        self._started = True
        self._limit = None
        if self._timeout is not None and not self._timeout.expired():
            self._timeout.reschedule(None)

    def asking_llm(self, remote: bool) -> TurnDeadline | None:
        """The LLM is being asked now. A remote one must answer by the turn's deadline (but
        gets at least ``MIN_LLM_WAIT_S``): returned for its guard. A local one gets
        ``hang_s``."""
        if self._timeout is None:  # the turn has not ended yet: see run()
            self._asked_early = True
            return None
        if self._limit is None or self._timeout.expired():
            return None
        if not remote:
            self._wait_for_local()
            return None
        deadline = max(self._limit, asyncio.get_running_loop().time() + MIN_LLM_WAIT_S)
        self._timeout.reschedule(deadline + GRACE_S)
        return TurnDeadline(deadline, self._wait_for_local)

    def _wait_for_local(self) -> None:
        if self._timeout is not None and not self._timeout.expired() and self._limit is not None:
            self._timeout.reschedule(asyncio.get_running_loop().time() + self.hang_s)

    async def run(self, work: Awaitable[None], t_end: float, stage: Callable[[], str]) -> TurnFailure | None:
        """Await ``work`` (the reply); None if it ran its course, else the failure.

        ``t_end`` is the end of the user's turn (``time.monotonic()``); ``stage()`` names the
        stage the reply was in, for failures that do not say it themselves. A cancellation
        from outside (barge-in, hang-up) propagates as usual.
        """
        if self.budget_s > 0:
            self._limit = asyncio.get_running_loop().time() + (t_end + self.budget_s - time.monotonic())
        timeout = asyncio.timeout_at(None)  # armed by asking_llm
        self._timeout = timeout
        try:
            async with timeout:
                if self._asked_early and not self._started:  # still silent: held like a local model
                    self._wait_for_local()
                await work
        except TimeoutError as exc:
            reason = TIMEOUT if timeout.expired() else ERROR
            return TurnFailure(stage(), reason, exc if reason == ERROR else TimeoutError("the reply did not start"))
        except Exception as exc:
            cause = _leaf(exc)
            if isinstance(cause, BackendError):
                return TurnFailure(cause.stage, TIMEOUT if cause.kind == TIMEOUT else ERROR, cause)
            return TurnFailure(stage(), ERROR, cause)
        finally:
            self._timeout = None
            self._limit = None
        return None


def _leaf(exc: BaseException) -> BaseException:
    """The first real exception inside task-group wrappers (the LLM and TTS run as a group)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def report(failure: TurnFailure, log_prefix: str) -> None:
    """Count the failure; log it once per outage (a bug: every time, with its traceback)."""
    REPLY_FALLBACKS.labels(failure.stage, failure.reason).inc()
    error = failure.error
    if isinstance(error, _OUTAGES):
        deps.failed(failure.stage, error, f"turns get a spoken apology (first: {log_prefix})")
    else:
        metrics.DEPENDENCY_ERRORS.labels(failure.stage).inc()
        logger.error("%s: the %s stage failed; apologizing", log_prefix, failure.stage, exc_info=error)


def answered(stages: tuple[str, ...]) -> None:
    """A turn got its reply: stages that were down are back (logged once, by parley.deps)."""
    for stage in stages:
        if deps.is_down(stage):
            deps.ok(stage)
