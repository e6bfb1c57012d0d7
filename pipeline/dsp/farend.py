"""The echo canceller's reference: what the agent track sent, on one sample timeline.

The outbound track hands over every 20 ms frame it sends (silence included) with its send
time; the inbound side gets 10 ms mic frames with their arrival time. Both are mapped onto
the far end's sample count: :class:`FarEndBuffer` keeps the last ~1.4 s of sent audio by
absolute sample index, and :class:`NearClock` gives each mic frame a far-end position.

Arrival times jitter (aiortc's jitter buffer delivers in bursts), so the near clock does
not follow them frame by frame: it counts samples from an anchor taken from the earliest
arrivals and re-anchors only on gross, persistent moves (a stall, a jitter buffer that
grew after a loss). What is left of the echo path -- network RTT, client jitter buffer and
playout -- is a fixed lag the delay estimator finds.
"""

from __future__ import annotations

import logging

import numpy as np

from pipeline.audio import FRAME_10MS, RATE
from pipeline.dsp.base import INT16_SCALE

logger = logging.getLogger(__name__)

RING_SAMPLES = 1 << 16  # 1.37 s: max delay 0.52 s + filter span + estimator window
GAP_FILL_S = 0.03  # a send-time jump beyond this is a pause in sending: fill with zeros
ACTIVE_DBFS = -60.0  # far frames above this carry agent audio
_FAR_FUTURE = 1 << 62  # larger than any sample index


class FarEndBuffer:
    """Ring buffer of sent far-end audio (float32), addressed by absolute sample index."""

    def __init__(self) -> None:
        self._ring = np.zeros(RING_SAMPLES, np.float32)
        self.end = 0  # absolute index one past the newest sample
        self.last_active_end = -RING_SAMPLES  # end index of the newest loud frame
        self._t_end: float | None = None
        self._active_energy = 10.0 ** (ACTIVE_DBFS / 10.0) * INT16_SCALE**2

    @property
    def started(self) -> bool:
        return self._t_end is not None

    def write(self, pcm: np.ndarray, t: float) -> None:
        """Append one sent frame (int16) whose first sample left at monotonic time ``t``."""
        if self._t_end is not None:
            gap = int(round((t - self._t_end) * RATE))
            if gap > GAP_FILL_S * RATE:
                self._append_zeros(gap)
        start = self.end % RING_SAMPLES
        n = len(pcm)
        first = min(n, RING_SAMPLES - start)
        np.multiply(pcm[:first], 1.0 / INT16_SCALE, out=self._ring[start : start + first])
        np.multiply(pcm[first:], 1.0 / INT16_SCALE, out=self._ring[: n - first])
        self.end += n
        self._t_end = t + n / RATE
        x = pcm.astype(np.float32)
        if float(np.dot(x, x)) > self._active_energy * n:
            self.last_active_end = self.end

    def index_at(self, t: float) -> int:
        """Far-end sample index being sent at monotonic time ``t`` (extrapolated)."""
        if self._t_end is None:
            raise RuntimeError("no far-end audio yet")
        return self.end + int(round((t - self._t_end) * RATE))

    def read(self, start: int, out: np.ndarray) -> np.ndarray:
        """Copy samples ``[start, start + len(out))`` into ``out``; unknown ones read as 0."""
        n = len(out)
        lo = max(start, self.end - RING_SAMPLES)
        hi = min(start + n, self.end)
        if hi <= lo:
            out[:] = 0.0
            return out
        out[: lo - start] = 0.0
        out[hi - start :] = 0.0
        a, b = lo % RING_SAMPLES, (hi - 1) % RING_SAMPLES + 1
        if a < b:
            out[lo - start : hi - start] = self._ring[a:b]
        else:
            split = RING_SAMPLES - a
            out[lo - start : lo - start + split] = self._ring[a:]
            out[lo - start + split : hi - start] = self._ring[:b]
        return out

    def _append_zeros(self, n: int) -> None:
        """Advance the timeline by ``n`` silent samples (however long the pause was)."""
        start = self.end % RING_SAMPLES
        zeros = min(n, RING_SAMPLES)
        first = min(zeros, RING_SAMPLES - start)
        self._ring[start : start + first] = 0.0
        self._ring[: zeros - first] = 0.0
        self.end += n


class NearClock:
    """Maps the n-th mic frame to a far-end position, ignoring arrival jitter.

    ``offset`` is the far index at which mic frame 0 ended; frame n ends at
    ``offset + 480 n``. It follows the earliest arrivals during the first second, then
    only jumps when arrivals are 60 ms early or stay 100 ms late for 2 s -- each jump
    invalidates the echo canceller's alignment, so the caller resets it.
    """

    SETTLE_FRAMES = 100
    WINDOW_FRAMES = 200
    EARLY = int(0.06 * RATE)
    LATE = int(0.10 * RATE)

    def __init__(self) -> None:
        self.offset: int | None = None
        self._n = 0
        self._window_min = _FAR_FUTURE
        self._window_left = self.WINDOW_FRAMES

    def position(self, measured_end: int) -> tuple[int, bool]:
        """Far index at the end of the next mic frame, and whether the clock re-anchored.

        ``measured_end`` is the far index at the frame's arrival time.
        """
        measured = measured_end - self._n * FRAME_10MS
        jumped = self._track(measured)
        pos = self._offset() + self._n * FRAME_10MS
        self._n += 1
        return pos, jumped

    def _offset(self) -> int:
        assert self.offset is not None
        return self.offset

    def _track(self, measured: int) -> bool:
        if self.offset is None:
            self.offset = measured
            return True
        if self._n < self.SETTLE_FRAMES:
            if measured < self.offset:
                self.offset = measured
                return True
            return False
        if measured < self.offset - self.EARLY:
            return self._reanchor(measured, "early")
        self._window_min = min(self._window_min, measured)
        self._window_left -= 1
        if self._window_left == 0:
            late = self._window_min > self.offset + self.LATE
            floor = self._window_min
            self._window_left, self._window_min = self.WINDOW_FRAMES, _FAR_FUTURE
            if late:
                return self._reanchor(floor, "late")
        return False

    def _reanchor(self, measured: int, why: str) -> bool:
        logger.info(
            "mic clock re-anchored (%s arrivals): %+.0f ms",
            why,
            (measured - self._offset()) * 1000 / RATE,
        )
        self.offset = measured
        self._window_min = _FAR_FUTURE
        self._window_left = self.WINDOW_FRAMES
        return True
