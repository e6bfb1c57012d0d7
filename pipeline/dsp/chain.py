"""The DSP chain a call runs on each inbound 10 ms frame, and the far-end tap for AEC.

    mic frame -> AEC (far end = what the agent track sent) -> VAD (fast opinion, noise
    floor) -> RNNoise (speech probability) -> AGC -> speech gate (careful decision) -> out

The order matters: echo cancellation first, while the mic is still linear in the far end
(noise suppression and gain are not); the fast VAD before RNNoise, where onsets are a
frame earlier and the room noise can still be measured; RNNoise before AGC so the gain
never lifts noise and adapts only on frames RNNoise calls speech.
The chain delays the audio by ``latency_ms`` (20 ms with the numpy AEC: 10 ms of residual
echo suppression overlap-add, 10 ms inside RNNoise); ``meta.t`` stays the arrival time of
the input frame.
"""

from __future__ import annotations

import time
from typing import Protocol

import numpy as np

from parley import metrics
from parley.config import Settings
from pipeline.audio import RATE
from pipeline.dsp.aec import EchoStage, make_canceller
from pipeline.dsp.agc import AgcStage
from pipeline.dsp.base import FrameMeta, FrameStage, check_frame
from pipeline.dsp.ns import RnnoiseStage, active_kernel, use_kernel
from pipeline.dsp.vad import SpeechGate, WebRtcVad

OBSERVE_EVERY = 10  # frames per DSP_FRAME observation: its lock and buckets cost ~2 us


class DspChain:
    """Runs the configured stages in order: AEC -> VAD -> NS -> AGC -> speech gate."""

    def __init__(self, settings: Settings) -> None:
        self.echo = EchoStage(make_canceller(settings.aec), double_talk=bool(settings.double_talk))
        use_kernel(settings.rnnoise_kernel)  # process-wide; every chain of a node asks the same
        self.ns = RnnoiseStage()
        self.stages: list[FrameStage] = [
            self.echo, WebRtcVad(), self.ns, AgcStage(), SpeechGate(),
        ]
        self._frames = 0
        metrics.DSP_RNNOISE_INT8.set(active_kernel() != "float")

    @property
    def latency_ms(self) -> float:
        """How much later a sound leaves the chain than it entered."""
        samples = self.echo.latency_samples + self.ns.latency_samples
        return samples * 1000.0 / RATE

    def process(self, frame: np.ndarray, t: float) -> tuple[np.ndarray, FrameMeta]:
        """One 10 ms inbound frame (480 int16 samples) that arrived at monotonic ``t``."""
        check_frame(frame)
        meta = FrameMeta(t=t)
        start = time.perf_counter()
        for stage in self.stages:
            frame = stage.process(frame, meta)
        self._frames += 1
        if self._frames % OBSERVE_EVERY == 0:
            metrics.DSP_FRAME.observe(time.perf_counter() - start)
        return frame, meta

    def far_end(self, pcm: np.ndarray, t: float) -> None:
        """What the agent track just sent (48 kHz mono int16), stamped with its send time."""
        self.echo.far_end(pcm, t)

    def close(self) -> None:
        """Nothing to release in process (the remote chain ends its stream here)."""


class InboundChain(Protocol):
    """What a call's agent needs of its chain, in process or remote."""

    @property
    def latency_ms(self) -> float: ...
    def process(self, frame: np.ndarray, t: float) -> tuple[np.ndarray, FrameMeta]: ...
    def far_end(self, pcm: np.ndarray, t: float) -> None: ...
    def close(self) -> None: ...


def make_chain(settings: Settings, session_id: str = "") -> InboundChain:
    """The call's chain: in process (default), or on ``parley dsp-serve`` when PARLEY_DSP_URL is set."""
    if settings.dsp_url:
        from pipeline.dsp.remote.client import RemoteDspChain  # grpc is loaded only where it is used

        return RemoteDspChain(settings, session_id)
    return DspChain(settings)
