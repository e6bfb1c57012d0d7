"""The calls of one worker process: creation limits, lookup, graceful shutdown, loop health."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from media_server.call import AgentFactory, Call, CallSession, RecorderFactory, RtcCall
from parley import metrics
from parley.config import Settings
from pipeline.tasks import TaskRegistry

logger = logging.getLogger(__name__)

TICK_S = 0.02
STRAGGLER_TIMEOUT_S = 2.0  # a close cancelled at the shutdown deadline still runs its finally


class TooManyCalls(RuntimeError):
    """This worker is at ``PARLEY_MAX_CALLS``."""


class CallManager:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.calls: dict[str, Call] = {}
        self.setting_up = 0  # WebRTC calls answering their offer, not registered yet (placement counts them)
        self.loop_late_ticks = 0
        self.tasks = TaskRegistry("calls")

    async def start(self) -> None:
        self.tasks.spawn(self._watch_loop_lag(), "loop-lag monitor")

    def check_capacity(self) -> None:
        if len(self.calls) >= self.settings.max_calls:
            raise TooManyCalls(f"this worker already has {len(self.calls)} calls")

    async def open_rtc(self, session: CallSession, sdp: str, agent_factory: AgentFactory,
                       recording: RecorderFactory | None = None) -> RtcCall:
        """Create a WebRTC call for ``sdp``; the call is registered once it has answered.

        ``recording``: the caller consented to recording; the factory makes the call's recorder.
        """
        self.check_capacity()
        call = RtcCall(session, agent_factory, self.settings, recording)
        self.setting_up += 1
        try:
            await call.accept(sdp)
        except BaseException:
            await call.close("offer rejected")
            raise
        finally:
            self.setting_up -= 1
        self.register(call)
        return call

    def register(self, call: Call) -> None:
        self.calls[call.id] = call
        metrics.CALLS_TOTAL.labels(call.transport).inc()
        metrics.CALLS_ACTIVE.labels(call.transport).inc()
        call.tasks.spawn(self._forget_when_closed(call), "registry")

    async def _forget_when_closed(self, call: Call) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await call.closed.wait()
        if self.calls.pop(call.id, None) is not None:
            metrics.CALLS_ACTIVE.labels(call.transport).dec()

    async def close_all(self, timeout: float = 5.0) -> None:
        """Graceful shutdown: hang up every call within ``timeout`` seconds; idempotent.

        A call that has not closed by then has its close cancelled — ``Call.close`` still
        stops its tasks and transport on the way out — and awaited, so none outlives this.
        """
        calls = list(self.calls.values())
        closing = [t for c in calls if (t := self.tasks.spawn(c.close("server shutdown"), f"close {c.log_prefix}"))]
        if closing:
            logger.info("closing %d calls", len(closing))
            late = await self.tasks.wait(timeout, closing)
            if late:
                logger.warning("%d calls not closed within %.1f s; cancelling their close", len(late), timeout)
        await self.tasks.cancel_all(STRAGGLER_TIMEOUT_S)  # stragglers and the lag monitor
        for call in calls:
            if self.calls.pop(call.id, None) is not None:
                metrics.CALLS_ACTIVE.labels(call.transport).dec()

    async def _watch_loop_lag(self) -> None:
        """Measure how late a 20 ms tick fires: the media loop's stall detector."""
        deadline = time.monotonic() + TICK_S
        while True:
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
            lag = time.monotonic() - deadline
            metrics.LOOP_LAG.observe(lag)
            if lag > TICK_S:
                self.loop_late_ticks += 1
            deadline = max(deadline + TICK_S, time.monotonic())
