"""Admission from measured load: a worker takes a new call only while its media loop keeps up.

A fixed call count is wrong in both directions: what one call costs depends on the
machine (RNNoise 0.24–1.7 ms per frame on two machines of the same kind), on DSP settings
and on what else runs there. So the worker measures, once a second, the three symptoms of
a saturated media process and calls the worst of them its *load* (1.0 = saturated):

- CPU: this process's CPU seconds per wall second (aiortc holds the GIL, so one core is the
  ceiling of a worker; codec threads may add a little beyond it);
- loop lag: the mean lateness of the call manager's 20 ms tick, 10 ms of it = 1.0;
- late frames: outbound frames sent more than a frame behind schedule, 0.5 % = 1.0 (the
  capacity criterion of ``parley bench capacity``).

Each is smoothed over a few seconds, so a single hiccup does not close the door. Calls
admitted since the last sample are added at the measured cost per call, so a burst of
offers does not all pass on one stale reading. Refusals carry a ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import REGISTRY, Gauge

from media_server.manager import TooManyCalls

logger = logging.getLogger(__name__)

SAMPLE_S = 1.0
SMOOTHING = 0.4  # weight of the newest sample: ~2.5 s memory
LAG_FULL_S = 0.010
LATE_FULL = 0.005
MIN_FRAMES = 250  # late frames count against at least 5 calls' worth per second: one late frame of one call is noise
DEFAULT_CALL_COST = 0.05  # one echo call with DSP on this kind of machine, before any is measured
RETRY_AFTER_S = 5

LOAD = Gauge("parley_worker_load", "Measured worker load (1.0 = saturated): max of CPU, loop lag, late frames")


class Overloaded(TooManyCalls):
    """This worker refuses new calls for now; try again after ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: int = RETRY_AFTER_S) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(slots=True)
class LoadSample:
    """One reading of the three load signals, each already scaled to 1.0 = saturated."""

    cpu: float
    lag: float
    late: float

    @property
    def load(self) -> float:
        return max(self.cpu, self.lag, self.late)


def _counter(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


class _Readings:
    """Cumulative counters of this process, read at each sample."""

    __slots__ = ("cpu", "lag_count", "lag_sum", "late", "sent", "wall")

    def __init__(self) -> None:
        self.wall = time.monotonic()
        self.cpu = time.process_time()
        self.lag_sum = _counter("parley_loop_lag_seconds_sum")
        self.lag_count = _counter("parley_loop_lag_seconds_count")
        self.sent = _counter("parley_frames_sent_total")
        self.late = _counter("parley_frames_late_total")

    def since(self, old: _Readings) -> LoadSample:
        wall = max(1e-3, self.wall - old.wall)
        ticks = self.lag_count - old.lag_count
        sent = self.sent - old.sent
        mean_lag = (self.lag_sum - old.lag_sum) / ticks if ticks else 0.0
        return LoadSample(
            cpu=(self.cpu - old.cpu) / wall,
            lag=mean_lag / LAG_FULL_S,
            late=(self.late - old.late) / max(sent, MIN_FRAMES) / LATE_FULL,
        )


def cost_per_call(load: float, calls: int) -> float:
    """What one more call adds to a worker at ``load`` with ``calls`` (a default until two
    calls have been measured)."""
    return DEFAULT_CALL_COST if calls < 2 else max(0.005, load / calls)


class LoadMonitor:
    """This worker's load and its admission decision; :meth:`run` samples once a second."""

    def __init__(self, active_calls: Callable[[], int], limit: float, max_calls: int) -> None:
        self._active_calls = active_calls
        self.limit = limit
        self.max_calls = max_calls
        self.smoothed = LoadSample(0.0, 0.0, 0.0)
        self._admitted_since_sample = 0
        self._last = _Readings()
        self.draining = False

    @property
    def call_cost(self) -> float:
        """Measured load per call (a default until calls have been measured)."""
        return cost_per_call(self.smoothed.load, self._active_calls())

    @property
    def load(self) -> float:
        """Smoothed load plus the expected cost of calls admitted since the last sample."""
        return self.smoothed.load + self._admitted_since_sample * self.call_cost

    def sample(self) -> LoadSample:
        """Take one reading and fold it into the smoothed load."""
        now = _Readings()
        raw = now.since(self._last)
        self._last = now
        s = self.smoothed
        self.smoothed = LoadSample(
            cpu=s.cpu + SMOOTHING * (raw.cpu - s.cpu),
            lag=s.lag + SMOOTHING * (raw.lag - s.lag),
            late=s.late + SMOOTHING * (raw.late - s.late),
        )
        self._admitted_since_sample = 0
        LOAD.set(self.smoothed.load)
        return raw

    async def run(self) -> None:
        """Sample every :data:`SAMPLE_S` on an absolute schedule until cancelled."""
        deadline = time.monotonic()
        while True:
            deadline += SAMPLE_S
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
            self.sample()

    def admit(self) -> None:
        """Account for one new call, or raise :class:`Overloaded` saying why not."""
        if self.draining:
            raise Overloaded("this server is shutting down; call again in a moment")
        calls = self._active_calls()
        if calls >= self.max_calls:
            raise Overloaded(f"this worker is at its ceiling of {self.max_calls} calls")
        if calls > 0 and self.load + self.call_cost > self.limit:
            s = self.smoothed
            raise Overloaded(
                f"the server is at capacity (load {self.load:.2f}: cpu {s.cpu:.2f}, loop lag {s.lag:.2f}, "
                f"late frames {s.late:.2f}); try again in {RETRY_AFTER_S} s",
            )
        self._admitted_since_sample += 1
