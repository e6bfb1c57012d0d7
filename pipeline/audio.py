"""The pipeline's audio format and a few helpers every stage shares.

Everything between the media server and the models is 48 kHz mono int16 (numpy), in
10 ms frames for DSP and 20 ms frames on the wire. Keeping one format avoids a resample
per stage; backends that want another rate (Whisper: 16 kHz, Piper: 22.05 kHz) convert
at their own edge with :func:`resample`.
"""

from __future__ import annotations

import wave
from pathlib import Path
from typing import BinaryIO

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
    """Resample a whole mono int16 clip; returns int16 mono at ``dst_rate``."""
    if src_rate == dst_rate or pcm.size == 0:
        return pcm.astype(np.int16, copy=False)
    from pipeline.dsp.resample import FrameResampler, join  # imports this module's constants

    converter = FrameResampler(rate=dst_rate, frame_samples=None)
    return join(converter.push_pcm(pcm, src_rate) + converter.flush())


def read_wav(path: str | Path) -> np.ndarray:
    """A 16-bit PCM WAV file as 48 kHz mono int16 (mixed down and resampled as needed)."""
    try:
        with wave.open(str(path), "rb") as w:
            if w.getsampwidth() != 2:
                raise ValueError(f"{path}: only 16-bit PCM WAV is supported")
            channels, rate = w.getnchannels(), w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    except (wave.Error, EOFError) as exc:
        raise ValueError(f"{path}: not a readable WAV file ({exc})") from exc
    if channels > 1:
        pcm = pcm.reshape(-1, channels).mean(axis=1).astype(np.int16)
    return resample(pcm, rate, RATE)


def write_wav(target: str | Path | BinaryIO, pcm: np.ndarray, rate: int = RATE) -> None:
    """Mono int16 ``pcm`` at ``rate`` as a 16-bit WAV file (a path or a binary stream)."""
    with wave.open(target if not isinstance(target, Path) else str(target), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.ascontiguousarray(pcm, dtype="<i2").tobytes())
