"""The room's audio mixer (an MCU): one 20 ms tick gives every listener its own mix-minus.

A pure, synchronous state machine, testable frame by frame without a loop: inbound audio is
pushed per participant into a small :class:`JitterBuffer` (10 ms frames, as the DSP chain
gets them); :meth:`Mixer.tick` takes one 20 ms frame from each buffer (silence from a
participant whose buffer ran dry: a stalled or departed peer never stalls the room), sums
everyone once, and gives each listener ``sum - own contribution``. The subtraction is exact
(float32 of int16 samples), so a listener's own voice is absent from what they receive,
not merely attenuated. A per-listener limiter keeps the mix of several loud
speakers out of int16 clipping without pumping the quiet ones (:func:`limit`).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np

from pipeline.audio import FRAME_10MS, FRAME_20MS

LIMIT = 0.89 * 32767  # -1 dBFS: headroom for Opus, which overshoots near full scale
RELEASE = 0.05  # fraction of the way back to unity gain per 20 ms frame (~400 ms release)


class JitterBuffer:
    """Inbound 10 ms frames of one participant, played out two at a time.

    It fills to ``prefetch`` frames before playing (and again after running dry), so the
    network's jitter is absorbed instead of becoming clicks; beyond ``capacity`` the oldest
    frames are dropped, so a burst after a stall cannot add lasting delay.
    """

    __slots__ = ("_frames", "capacity", "dropped", "prefetch", "underruns", "_playing")

    def __init__(self, prefetch: int = 4, capacity: int = 20) -> None:
        self._frames: collections.deque[np.ndarray] = collections.deque()
        self.prefetch = prefetch
        self.capacity = capacity
        self.dropped = 0
        self.underruns = 0
        self._playing = False

    def __len__(self) -> int:
        return len(self._frames)

    def push(self, pcm: np.ndarray) -> None:
        """One 10 ms 48 kHz mono int16 frame."""
        self._frames.append(pcm)
        while len(self._frames) > self.capacity:
            self._frames.popleft()
            self.dropped += 1

    def pop20(self) -> np.ndarray | None:
        """The next 20 ms (960 samples, int16), or None while filling or dry."""
        if not self._playing:
            if len(self._frames) < self.prefetch:
                return None
            self._playing = True
        if len(self._frames) < 2:
            self._playing = False
            self.underruns += 1
            self._frames.clear()  # a lone half frame would play out of step: wait for more
            return None
        return np.concatenate((self._frames.popleft(), self._frames.popleft()))

    def clear(self) -> None:
        self._frames.clear()
        self._playing = False


_RAMP = np.linspace(0.0, 1.0, FRAME_20MS, dtype=np.float32)


def limit(mixes: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """Peak-limit every listener's mix at once (rows of ``mixes``, float32).

    Instant attack, smooth release (``RELEASE`` of the way back to unity per frame), the
    gain ramped across each frame so it never steps; ``gains`` (one per row) is updated in
    place. One vectorised pass for the whole room: a per-listener loop of small numpy calls
    cost several times more per tick. Returns int16 rows.
    """
    peaks = np.abs(mixes).max(axis=1)
    targets = np.minimum(1.0, LIMIT / np.maximum(peaks, 1.0)).astype(np.float32)
    new = np.minimum(targets, gains + (1.0 - gains) * RELEASE)
    if np.any(new < 1.0) or np.any(gains < 1.0):
        ramps = gains[:, None] + (new - gains)[:, None] * _RAMP[None, :]
        mixes = mixes * np.minimum(ramps, targets[:, None])  # attack holds at the peak
    gains[:] = new
    return np.clip(mixes, -32768, 32767).astype(np.int16)


@dataclass(slots=True)
class MixResult:
    """One tick: what each listener receives, and who contributed voice to it."""

    outputs: dict[str, np.ndarray]  # participant id -> 960 int16 samples
    active: set[str]  # participants whose buffer gave audio this tick


class Mixer:
    """Mix-minus for the participants of one room, plus one agent voice heard by all."""

    def __init__(self, prefetch: int = 4, capacity: int = 20) -> None:
        self._prefetch = prefetch
        self._capacity = capacity
        self.buffers: dict[str, JitterBuffer] = {}
        self._gains: dict[str, float] = {}  # each listener's limiter gain
        self._silence = np.zeros(FRAME_20MS, dtype=np.int16)

    def add(self, pid: str) -> None:
        self.buffers[pid] = JitterBuffer(self._prefetch, self._capacity)
        self._gains[pid] = 1.0

    def remove(self, pid: str) -> None:
        self.buffers.pop(pid, None)
        self._gains.pop(pid, None)

    def push(self, pid: str, pcm: np.ndarray) -> None:
        """A participant's inbound 10 ms frame; ignored once they have left."""
        buffer = self.buffers.get(pid)
        if buffer is not None:
            if pcm.size != FRAME_10MS:
                raise ValueError(f"mixer frames are {FRAME_10MS} samples, got {pcm.size}")
            buffer.push(pcm)

    def tick(self, agent: np.ndarray | None = None) -> MixResult:
        """One 20 ms step: every listener's mix of all the others plus ``agent``."""
        ids = list(self.buffers)
        if not ids:
            return MixResult({}, set())
        frames = [self.buffers[pid].pop20() for pid in ids]
        active = {pid for pid, f in zip(ids, frames, strict=True) if f is not None}
        own = np.zeros((len(ids), FRAME_20MS), dtype=np.float32)
        for row, frame in enumerate(frames):
            if frame is not None:
                own[row] = frame
        total = own.sum(axis=0)
        if agent is not None:
            total += agent.astype(np.float32)
        mixes = total[np.newaxis, :] - own  # mix-minus: sum once, subtract each listener
        gains = np.array([self._gains[pid] for pid in ids], dtype=np.float32)
        limited = limit(mixes, gains)
        for pid, gain in zip(ids, gains.tolist(), strict=True):
            self._gains[pid] = gain
        outputs = {pid: limited[row] for row, pid in enumerate(ids)}
        return MixResult(outputs, active)
