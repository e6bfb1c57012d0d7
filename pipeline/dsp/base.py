"""The frame-stage contract shared by every DSP stage.

Stages are I/O-free synchronous state machines (testable frame by frame without an event
loop); the chain that runs them is called from the call's inbound reader for each 10 ms
frame, so a stage must stay well under a millisecond.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from pipeline.audio import FRAME_10MS

FRAME_MS = 10
INT16_SCALE = 32768.0


@dataclass(slots=True)
class FrameMeta:
    """Per-frame facts stages add for the ones after them (and for metrics)."""

    t: float  # monotonic time of the frame's first sample at capture/arrival
    speech_probability: float = 0.0  # RNNoise's estimate, 0..1
    is_speech: bool = False  # the VAD's decision (with hangover)
    maybe_speech: bool = False  # permissive, immediate evidence (webrtcvad alone), for onsets
    noise_level_db: float = -120.0  # tracked noise floor of the (echo-cancelled) input, dBFS
    level_db: float = -120.0  # level of the frame the VAD saw, dBFS
    echo_active: bool = False  # the agent was audible in the far end around this frame
    echo_uncertain: bool = False  # ... and the canceller may not remove it yet (call start)
    double_talk: bool = False  # the user is audible over the agent's echo (no converged AEC needed)
    echo_passed: bool = False  # the mic went through a converged canceller untouched: the user's voice
    echo_delay_ms: float | None = None  # tracked echo path delay, None until estimated
    gain_db: float = 0.0  # gain the AGC applied


class FrameStage(Protocol):
    """One DSP stage: transforms a 10 ms frame (480 samples) and/or annotates ``meta``."""

    name: str

    def process(self, frame: np.ndarray, meta: FrameMeta) -> np.ndarray: ...


def to_float(frame: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """int16 -> float32 in [-1, 1); ``out`` lets hot paths reuse one buffer per stage."""
    if out is None:
        out = np.empty(frame.shape, np.float32)
    np.multiply(frame, 1.0 / INT16_SCALE, out=out, casting="unsafe")
    return out


def to_int16(x: np.ndarray) -> np.ndarray:
    """float in [-1, 1) -> int16 with rounding and saturation (never wraps around)."""
    scaled = np.rint(x * INT16_SCALE)
    np.clip(scaled, -32768, 32767, out=scaled)
    return scaled.astype(np.int16)


def check_frame(frame: np.ndarray) -> None:
    """Reject frames of the wrong shape early: every stage assumes exactly 480 samples."""
    if frame.shape != (FRAME_10MS,):
        raise ValueError(f"DSP frames are {FRAME_10MS} mono samples, got shape {frame.shape}")
