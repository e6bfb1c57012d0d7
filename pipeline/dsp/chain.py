"""The DSP chain a call runs on each inbound 10 ms frame, and the far-end tap for AEC."""

from __future__ import annotations

import numpy as np

from parley.config import Settings
from pipeline.dsp.base import FrameMeta, FrameStage
from pipeline.dsp.vad import WebRtcVad


class DspChain:
    """Runs the configured stages in order: (AEC -> NS -> AGC ->) VAD."""

    def __init__(self, settings: Settings) -> None:
        self.stages: list[FrameStage] = [WebRtcVad()]

    def process(self, frame: np.ndarray, t: float) -> tuple[np.ndarray, FrameMeta]:
        meta = FrameMeta(t=t)
        for stage in self.stages:
            frame = stage.process(frame, meta)
        return frame, meta

    def far_end(self, pcm: np.ndarray, t: float) -> None:
        """What the agent track just sent (48 kHz mono int16), stamped with its send time."""
