"""The echo cancellation stage: far-end reference, clock, delay tracking, and a canceller.

Everything echo-specific but canceller-agnostic lives here, so both cancellers see the
very same aligned reference and can be compared fairly:

1. :meth:`EchoStage.far_end` stores each frame the agent track sent (with its send time);
2. each mic frame gets a far-end position from the :class:`NearClock`;
3. the :class:`DelayEstimator` finds the echo lag (0-520 ms);
4. the canceller gets the far end at ``lag - 20 ms`` (rounded down to whole frames, moved
   only when the lag leaves its window), or ``None`` when no agent audio can be in this
   frame -- then the canceller may skip its work.

``meta.echo_active`` is set whenever agent audio could be in the frame, even before the
lag is known, so the turn detector can ask for more evidence of a barge-in.
``meta.echo_uncertain`` marks the first second or so of agent speech in a call, before the
lag is found and the canceller has converged: the echo passes nearly untouched then, and
the turn detector must not take it for the user -- unless ``meta.double_talk``
(:mod:`pipeline.dsp.doubletalk`, which needs no converged filter) hears the user above
any echo the far end could cause. If no echo shows up within 1.2 s of agent
speech (headphones, or a client that cancels its own echo) the flag is dropped for good.
Once the canceller is trusted, ``meta.echo_passed`` says the user's voice went through it
(:mod:`pipeline.dsp.passthrough`): such frames need not count half as barge-in evidence.
"""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np

from parley.config import AEC_KINDS
from pipeline.audio import FRAME_10MS, RATE
from pipeline.dsp.base import FrameMeta, to_float
from pipeline.dsp.delay import DelayEstimator
from pipeline.dsp.doubletalk import DoubleTalkDetector
from pipeline.dsp.farend import FarEndBuffer, NearClock
from pipeline.dsp.passthrough import PassThroughDetector

logger = logging.getLogger(__name__)

LEAD_BLOCKS = 2  # the filter starts this many frames before the estimated lag
TAIL_MARGIN = int(0.1 * RATE)  # rooms ring on past the filter: flag echo that much longer
MAX_LAG = int(0.52 * RATE)
TRUST_FRAMES = 100  # echo-active frames with a placed filter before its output is trusted
GIVE_UP_FRAMES = 120  # echo-active frames without an echo found: there is none to cancel


class EchoCanceller(Protocol):
    """A canceller fed mic frames and the far end already aligned to the echo."""

    name: str
    latency_samples: int
    span_samples: int

    def process(self, near: np.ndarray, far: np.ndarray | None) -> np.ndarray: ...

    def realign(self, shift_blocks: int, history: np.ndarray, residual: int) -> None: ...

    def reset(self) -> None: ...


def make_canceller(kind: str) -> EchoCanceller | None:
    """The canceller for ``Settings.aec``; ``None`` for "off"."""
    if kind == "numpy":
        from pipeline.dsp.aec_numpy import NumpyEchoCanceller

        return NumpyEchoCanceller()
    if kind == "apm":
        from pipeline.dsp.aec_apm import ApmEchoCanceller

        return ApmEchoCanceller()
    if kind == "off":
        return None
    raise ValueError(f"unknown AEC {kind!r}; expected one of {', '.join(AEC_KINDS)}")


class EchoStage:
    """Frame stage removing the agent's own voice from the mic (see module docstring)."""

    name = "aec"

    def __init__(self, canceller: EchoCanceller | None, *, double_talk: bool = False) -> None:
        self.canceller = canceller
        self.far = FarEndBuffer()
        self.clock = NearClock()
        self.delay = DelayEstimator(max_delay_ms=MAX_LAG * 1000 / RATE)
        self.lag: int | None = None  # start of the filter window (far samples before pos)
        self.double_talk = DoubleTalkDetector() if double_talk else None
        self.pass_through = PassThroughDetector()
        self._span = canceller.span_samples if canceller else 0
        self._active_frames = 0  # echo-active frames so far (since the last reset)
        self._trusted_frames = 0  # ... of which with the filter placed
        self._near = np.zeros(FRAME_10MS, np.float32)
        self._far0 = np.zeros(FRAME_10MS, np.float32)
        self._aligned = np.zeros(FRAME_10MS, np.float32)
        self._out = np.zeros(FRAME_10MS, np.float32)

    @property
    def latency_samples(self) -> int:
        return self.canceller.latency_samples if self.canceller else 0

    def far_end(self, pcm: np.ndarray, t: float) -> None:
        self.far.write(pcm, t)

    def process(self, frame: np.ndarray, meta: FrameMeta) -> np.ndarray:
        if not self.far.started:
            return self._cancel(frame, None)
        pos, jumped = self.clock.position(self.far.index_at(meta.t))
        if jumped:
            self._forget()
        reach = (self.lag if self.lag is not None else MAX_LAG) + self._span + TAIL_MARGIN
        # once a search found no echo path (headphones, a client with its own AEC), the
        # far end is no reason to doubt the mic; a path found later makes it count again
        searching = self.lag is not None or self._active_frames < GIVE_UP_FRAMES
        meta.echo_active = searching and self.far.last_active_end > pos - reach
        if self.canceller is None:
            return frame
        if self.far.last_active_end > pos - reach:
            meta.echo_uncertain = self._uncertain()
        self._track_delay(frame, pos)
        if self.delay.delay is not None:
            meta.echo_delay_ms = self.delay.delay * 1000.0 / RATE
        if meta.echo_active and self.double_talk is not None:  # _near, _far0: set by _track_delay
            self.double_talk.push_far(self._far0)
            # the whole delay range: an early delay estimate can be wrong (34 ms for a
            # 270 ms path, seen in a call), and a window placed there misses the echo
            talk = self.double_talk.update(self._near, None)
            meta.double_talk = talk and meta.echo_uncertain  # a converged canceller decides alone
        if self.lag is None or not meta.echo_active:
            return self._cancel(frame, None)
        out = self._cancel(frame, self.far.read(pos - self.lag - FRAME_10MS, self._aligned))
        if not meta.echo_uncertain:
            meta.echo_passed = self.pass_through.update(self._near, to_float(out, self._out))
        return out

    def _uncertain(self) -> bool:
        self._active_frames += 1
        self._trusted_frames += self.lag is not None
        if self.lag is None:  # no echo found (yet): wait a little, then assume there is none
            return self._active_frames < GIVE_UP_FRAMES
        return self._trusted_frames < TRUST_FRAMES

    def _cancel(self, frame: np.ndarray, far: np.ndarray | None) -> np.ndarray:
        return self.canceller.process(frame, far) if self.canceller else frame

    def _track_delay(self, frame: np.ndarray, pos: int) -> None:
        recent = self.far.last_active_end > pos - MAX_LAG - FRAME_10MS * 26
        self.far.read(pos - FRAME_10MS, self._far0)
        if self.delay.push(to_float(frame, self._near), self._far0, recent):
            self._place(self.delay.delay, pos)

    def _place(self, delay: int | None, pos: int) -> None:
        """Move the filter window when the lag left [lag + 1 frame, lag + 4 frames)."""
        assert delay is not None and self.canceller is not None
        if self.lag is not None and self.lag + FRAME_10MS <= delay < self.lag + 4 * FRAME_10MS:
            return
        new_lag = max(0, (delay // FRAME_10MS - LEAD_BLOCKS) * FRAME_10MS)
        shift = 0 if self.lag is None else (new_lag - self.lag) // FRAME_10MS
        logger.debug(
            "echo delay %.1f ms, filter window from %.0f ms", delay * 1000 / RATE, new_lag * 1000 / RATE
        )
        self.lag = new_lag
        # the far end up to the previous frame: this frame's block is pushed by process()
        history = np.zeros(self._span + FRAME_10MS, np.float32)
        self.far.read(pos - FRAME_10MS - new_lag - len(history), history)
        self.canceller.realign(shift, history, delay - new_lag)

    def _forget(self) -> None:
        """The mic clock jumped: lag and filter are meaningless on the new timeline."""
        self.delay.reset()
        self.lag = None
        self._active_frames = self._trusted_frames = 0
        if self.canceller is not None:
            self.canceller.reset()
