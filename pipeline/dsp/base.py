"""The frame-stage contract shared by every DSP stage.

Stages are I/O-free synchronous state machines (testable frame by frame without an event
loop); the chain that runs them is called from the call's inbound reader for each 10 ms
frame, so a stage must stay well under a millisecond.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(slots=True)
class FrameMeta:
    """Per-frame facts stages add for the ones after them (and for metrics)."""

    t: float  # monotonic time of the frame's first sample at capture/arrival
    speech_probability: float = 0.0
    is_speech: bool = False
    noise_level_db: float = -120.0
    level_db: float = -120.0
    echo_active: bool = False  # the agent was audible in the far end around this frame


class FrameStage(Protocol):
    """One DSP stage: transforms a 10 ms frame (480 samples) and/or annotates ``meta``."""

    name: str

    def process(self, frame: np.ndarray, meta: FrameMeta) -> np.ndarray: ...
