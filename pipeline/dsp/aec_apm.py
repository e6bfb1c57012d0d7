"""Echo canceller from WebRTC's audio processing module (AEC3), through the ``livekit`` wheel.

AEC3 brings its own delay estimator, two-filter linear canceller, residual echo suppressor
and comfort noise. It is fed the far end already aligned by our delay estimator (so a
500 ms echo path stays inside its search range) with the remaining few tens of
milliseconds given as the stream-delay hint. Only the echo canceller is enabled: noise
suppression and gain stay with RNNoise and our AGC, so the two AEC options differ in the
AEC alone.

The livekit FFI processes a frame in place in a ``bytearray``; one frame object per
direction is allocated here and refilled, so the hot path allocates nothing but the output.
"""

from __future__ import annotations

import numpy as np
from livekit import rtc

from pipeline.audio import FRAME_10MS, RATE
from pipeline.dsp.base import INT16_SCALE


class ApmEchoCanceller:
    """WebRTC AEC3 on 10 ms int16 frames; its band-split filters delay the output ~9 ms."""

    name = "apm"
    latency_samples = 430  # measured: an impulse comes out 430 samples later
    span_samples = 12 * FRAME_10MS  # how far past its alignment the echo may reach

    def __init__(self) -> None:
        self._near_frame = rtc.AudioFrame(bytearray(2 * FRAME_10MS), RATE, 1, FRAME_10MS)
        self._far_frame = rtc.AudioFrame(bytearray(2 * FRAME_10MS), RATE, 1, FRAME_10MS)
        self._near = np.frombuffer(self._near_frame.data, dtype=np.int16)
        self._far = np.frombuffer(self._far_frame.data, dtype=np.int16)
        self._scaled = np.zeros(FRAME_10MS, np.float32)
        self._hint_ms = 0
        self._apm = self._create()

    @staticmethod
    def _create() -> rtc.AudioProcessingModule:
        return rtc.AudioProcessingModule(echo_cancellation=True)

    def reset(self) -> None:
        """A fresh AEC3 (the alignment moved too far for its own tracking)."""
        self._apm = self._create()

    def process(self, near: np.ndarray, far: np.ndarray | None) -> np.ndarray:
        """Cancel the echo of ``far`` (aligned block, float32) in ``near`` (int16).

        AEC3 runs on every frame, with a silent far end when there is none: skipping it
        would switch the output between delayed and undelayed audio (a click, and audio
        lost or repeated) and leave stale samples in its buffers.
        """
        if far is None:
            self._far[:] = 0
        else:
            np.multiply(far, INT16_SCALE, out=self._scaled)
            np.clip(self._scaled, -32768, 32767, out=self._scaled)
            self._far[:] = self._scaled
        self._near[:] = near
        self._apm.process_reverse_stream(self._far_frame)
        self._apm.set_stream_delay_ms(self._hint_ms)
        self._apm.process_stream(self._near_frame)
        return self._near.copy()

    def realign(self, shift_blocks: int, history: np.ndarray, residual: int) -> None:
        """AEC3 follows a moved reference itself; it only gets ``residual`` as its hint."""
        self._hint_ms = residual * 1000 // RATE
