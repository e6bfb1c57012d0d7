"""The calls of one worker process: creation limits, lookup, graceful shutdown, loop health."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from media_server.call import AgentFactory, Call, CallSession, RtcCall
from parley import metrics
from parley.config import Settings

logger = logging.getLogger(__name__)

TICK_S = 0.02


class TooManyCalls(RuntimeError):
    """This worker is at ``PARLEY_MAX_CALLS``."""


class CallManager:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.calls: dict[str, Call] = {}
        self.loop_late_ticks = 0
        self._lag_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._lag_task = asyncio.create_task(self._watch_loop_lag(), name="loop-lag monitor")

    def check_capacity(self) -> None:
        if len(self.calls) >= self.settings.max_calls:
            raise TooManyCalls(f"this worker already has {len(self.calls)} calls")

    async def open_rtc(self, session: CallSession, sdp: str, agent_factory: AgentFactory) -> RtcCall:
        """Create a WebRTC call for ``sdp``; the call is registered once it has answered."""
        self.check_capacity()
        call = RtcCall(session, agent_factory, self.settings)
        try:
            await call.accept(sdp)
        except BaseException:
            await call.close("offer rejected")
            raise
        self.register(call)
        return call

    def register(self, call: Call) -> None:
        self.calls[call.id] = call
        metrics.CALLS_TOTAL.labels(call.transport).inc()
        metrics.CALLS_ACTIVE.labels(call.transport).inc()
        call.spawn(self._forget_when_closed(call), "registry")

    async def _forget_when_closed(self, call: Call) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await call.closed.wait()
        if self.calls.pop(call.id, None) is not None:
            metrics.CALLS_ACTIVE.labels(call.transport).dec()

    async def close_all(self, timeout: float = 5.0) -> None:
        """Graceful shutdown: hang up every call, within ``timeout`` seconds."""
        calls = list(self.calls.values())
        if calls:
            logger.info("closing %d calls", len(calls))
            await asyncio.wait([asyncio.create_task(c.close("server shutdown")) for c in calls], timeout=timeout)
        for call in calls:
            if self.calls.pop(call.id, None) is not None:
                metrics.CALLS_ACTIVE.labels(call.transport).dec()
        if self._lag_task is not None:
            self._lag_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lag_task

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
