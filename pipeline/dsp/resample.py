"""Format edge of the DSP chain: any peer PCM <-> exact fixed-size frames of one format.

Peers send what their transport gives: aiortc decodes Opus to 48 kHz *stereo* s16 in
960-sample frames (even for a mono browser), a SIP leg gives 8 kHz mono G.711 in 160-sample
frames. The chain wants 48 kHz mono int16 in exactly 480-sample frames; the way back wants
e.g. 8 kHz mono 20 ms frames. One :class:`FrameResampler` per direction and per peer keeps
libswresample's filter state across calls (a fresh resampler per frame would click at
every frame edge) and its frame-size FIFO re-chunks the output, so no numpy buffering.
With ``frame_samples=None`` the output comes in whatever sizes the filter gives (TTS and
network audio streams, one-shot conversions). This is the project's one wrapper around
PyAV's resampler.
"""

from __future__ import annotations

import av
import numpy as np

from pipeline.audio import FRAME_10MS, RATE

_LAYOUT_CHANNELS = {"mono": 1, "stereo": 2}


class FrameResampler:
    """Converts a PCM stream to ``frame_samples``-sample s16 frames at ``rate``/``layout``.

    Output arrays are int16: shape ``(frame_samples,)`` for mono, interleaved
    ``(2 * frame_samples,)`` for stereo. The converter buffers the remainder internally, so
    one input frame can yield zero, one or several output frames (any size when
    ``frame_samples`` is None).
    """

    def __init__(
        self, *, rate: int = RATE, layout: str = "mono", frame_samples: int | None = FRAME_10MS
    ) -> None:
        if layout not in _LAYOUT_CHANNELS:
            raise ValueError(f"layout must be one of {sorted(_LAYOUT_CHANNELS)}, got {layout!r}")
        self.rate = rate
        self.layout = layout
        self.frame_samples = frame_samples
        self._resampler = av.AudioResampler(
            format="s16", layout=layout, rate=rate, frame_size=frame_samples
        )

    def push(self, frame: av.AudioFrame) -> list[np.ndarray]:
        """Convert one decoded frame (any rate, layout, sample format) from a peer.

        The frame's ``pts`` is cleared first: aiortc stamps frames with RTP-derived times
        that jump after losses, and a timestamp gap would make the filter graph insert or
        drop audio; the call timeline is kept by the caller instead.
        """
        frame.pts = None
        return [self._to_array(out) for out in self._resampler.resample(frame)]

    def push_pcm(self, pcm: np.ndarray, rate: int, layout: str = "mono") -> list[np.ndarray]:
        """Convert raw int16 PCM (interleaved when stereo), e.g. a decoded G.711 payload."""
        channels = _LAYOUT_CHANNELS[layout]
        packed = np.ascontiguousarray(pcm, dtype=np.int16).reshape(1, -1)
        if packed.shape[1] % channels:
            raise ValueError(f"{layout} PCM needs a multiple of {channels} samples")
        frame = av.AudioFrame.from_ndarray(packed, format="s16", layout=layout)
        frame.sample_rate = rate
        return self.push(frame)

    def flush(self) -> list[np.ndarray]:
        """Drain the filter at the end of a stream; a short last frame is zero-padded."""
        tail = [self._to_array(out) for out in self._resampler.resample(None)]
        if self.frame_samples is None:
            return tail
        channels = _LAYOUT_CHANNELS[self.layout]
        full = self.frame_samples * channels
        return [np.pad(x, (0, full - len(x))) if len(x) < full else x for x in tail]

    @staticmethod
    def _to_array(frame: av.AudioFrame) -> np.ndarray:
        return frame.to_ndarray().reshape(-1)


def join(parts: list[np.ndarray]) -> np.ndarray:
    """Concatenated int16 output of a converter (empty when it gave nothing yet)."""
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int16)
