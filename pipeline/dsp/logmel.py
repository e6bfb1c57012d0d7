"""Whisper's log-mel spectrogram, in numpy: the input features of Whisper-family models.

The end-of-turn model (:mod:`pipeline.dsp.smart_turn`) was trained on exactly these
features, so every step follows Whisper's front end rather than a "nicer" variant:

* 16 kHz audio, optionally normalised to zero mean and unit variance first (the
  Hugging Face extractor's ``do_normalize``, which Smart Turn was trained with);
* a centred STFT: reflect-padding of ``N_FFT // 2`` on both sides, a 400-point *periodic*
  Hann window, hop 160 (10 ms), power spectrum; the last frame is dropped, so 8 s give
  exactly 800 frames;
* 80 triangular mel filters on the Slaney mel scale (linear below 1 kHz, logarithmic
  above) with Slaney area normalisation, 0-8 kHz;
* ``log10`` clamped at 1e-10, then floored at (max - 8) -- an 80 dB dynamic range relative
  to the loudest bin of *this* buffer -- and scaled by ``(x + 4) / 4``.

Pure functions, no state: the filterbank is built once per process and cached.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
N_MELS = 80

_F_SP = 200.0 / 3  # Slaney: Hz per mel on the linear part
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOG_STEP = np.log(6.4) / 27.0


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear up to 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / _F_SP
    log_part = hz >= _MIN_LOG_HZ
    mel[log_part] = _MIN_LOG_MEL + np.log(hz[log_part] / _MIN_LOG_HZ) / _LOG_STEP
    return mel


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    hz = mel * _F_SP
    log_part = mel >= _MIN_LOG_MEL
    hz[log_part] = _MIN_LOG_HZ * np.exp(_LOG_STEP * (mel[log_part] - _MIN_LOG_MEL))
    return hz


@lru_cache(maxsize=4)
def mel_filterbank(n_mels: int = N_MELS, n_fft: int = N_FFT, rate: int = SAMPLE_RATE) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters, each with unit area (Slaney norm)."""
    fft_hz = np.linspace(0.0, rate / 2, n_fft // 2 + 1)
    edges_mel = np.linspace(hz_to_mel(np.array([0.0]))[0], hz_to_mel(np.array([rate / 2]))[0], n_mels + 2)
    edges_hz = mel_to_hz(edges_mel)
    lower, centre, upper = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (fft_hz[None, :] - lower) / (centre - lower)
    falling = (upper - fft_hz[None, :]) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]  # equal area per filter
    weights.setflags(write=False)
    return weights


@lru_cache(maxsize=2)
def _window(n_fft: int) -> np.ndarray:
    """Periodic Hann (the DFT-even window torch.hann_window gives by default)."""
    n = np.arange(n_fft)
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / n_fft)
    w.setflags(write=False)
    return w


def power_spectrogram(audio: np.ndarray, n_fft: int = N_FFT, hop: int = HOP) -> np.ndarray:
    """(n_fft // 2 + 1, frames) power spectrum of a centred STFT, last frame dropped."""
    pad = n_fft // 2
    padded = np.pad(np.asarray(audio, dtype=np.float64), (pad, pad), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    spectrum = np.fft.rfft(frames * _window(n_fft), axis=1)
    power = spectrum.real**2 + spectrum.imag**2
    return power[:-1].T


def normalize(audio: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance (the extractor's ``do_normalize``); silence stays silence."""
    x = np.asarray(audio, dtype=np.float32)
    return (x - x.mean()) / np.sqrt(x.var() + 1e-7)


def log_mel(audio: np.ndarray, *, do_normalize: bool = False) -> np.ndarray:
    """(80, len(audio) // 160) Whisper log-mel features of 16 kHz float audio in [-1, 1]."""
    x = normalize(audio) if do_normalize else np.asarray(audio, dtype=np.float32)
    mel = mel_filterbank() @ power_spectrogram(x)
    logs = np.log10(np.maximum(mel, 1e-10))
    logs = np.maximum(logs, logs.max() - 8.0)
    return ((logs + 4.0) / 4.0).astype(np.float32)


def fit_window(audio: np.ndarray, seconds: float, rate: int = SAMPLE_RATE) -> np.ndarray:
    """The last ``seconds`` of ``audio``, left-padded with zeros to exactly that length.

    Left padding keeps the end of the utterance -- the part an end-of-turn model judges --
    at the same place in every input.
    """
    n = int(seconds * rate)
    x = np.asarray(audio, dtype=np.float32)[-n:]
    return np.pad(x, (n - x.size, 0)) if x.size < n else x
