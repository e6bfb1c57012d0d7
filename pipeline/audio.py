"""The pipeline's audio format and a few helpers every stage shares.

Everything between the media server and the models is 48 kHz mono int16 (numpy), in
10 ms frames for DSP and 20 ms frames on the wire. Keeping one format avoids a resample
per stage; backends that want another rate (Whisper: 16 kHz, Piper: 22.05 kHz) convert
at their own edge with :func:`resample`.
"""

from __future__ import annotations

import numpy as np

RATE = 48000
FRAME_10MS = RATE // 100
FRAME_20MS = RATE // 50


def silence(samples: int) -> np.ndarray:
    return np.zeros(samples, dtype=np.int16)


def rms_dbfs(pcm: np.ndarray) -> float:
    """RMS level in dBFS (-120 for digital silence)."""
    if pcm.size == 0:
        return -120.0
    x = pcm.astype(np.float32) / 32768.0
    rms = float(np.sqrt(np.mean(x * x)))
    return 20.0 * np.log10(rms) if rms > 1e-6 else -120.0


def resample(pcm: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Resample mono int16 with PyAV (libswresample); returns int16 mono at ``dst_rate``."""
    if src_rate == dst_rate or pcm.size == 0:
        return pcm.astype(np.int16, copy=False)
    import av

    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(pcm, dtype=np.int16).reshape(1, -1), format="s16", layout="mono"
    )
    frame.sample_rate = src_rate
    resampler = av.AudioResampler(format="s16", layout="mono", rate=dst_rate)
    out = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    out += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int16)
