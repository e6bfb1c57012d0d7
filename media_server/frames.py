"""Inbound audio: decoded peer frames → the pipeline's 48 kHz mono int16 10 ms frames.

aiortc hands decoded Opus as packed s16 *stereo* 48 kHz (even for a mono browser mic), so
the common case is a cheap numpy channel average; anything else (another rate, planar or
float formats, G.711 at 8 kHz) goes through PyAV's resampler, which keeps its state across
frames so there are no clicks at frame edges.
"""

from __future__ import annotations

import av
import numpy as np

from pipeline.audio import FRAME_10MS, RATE


class InboundConverter:
    """Stateful converter; feed frames in order, get whole 10 ms frames out."""

    def __init__(self) -> None:
        self._resampler: av.AudioResampler | None = None
        self._rest = np.zeros(0, dtype=np.int16)

    def convert(self, frame: av.AudioFrame) -> list[np.ndarray]:
        pcm = self._to_mono(frame)
        if self._rest.size:
            pcm = np.concatenate((self._rest, pcm))
        whole = pcm.size - pcm.size % FRAME_10MS
        self._rest = pcm[whole:].copy()
        return [pcm[i : i + FRAME_10MS] for i in range(0, whole, FRAME_10MS)]

    def _to_mono(self, frame: av.AudioFrame) -> np.ndarray:
        if frame.format.name == "s16" and frame.sample_rate == RATE:
            channels = len(frame.layout.channels)
            data = frame.to_ndarray().reshape(-1)
            if channels == 1:
                return data
            return data.reshape(-1, channels).mean(axis=1).astype(np.int16)
        if self._resampler is None:
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
        out = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int16)
