"""Residual echo suppression after the linear echo canceller.

A linear filter cannot remove what is not linear in the far end (the loudspeaker's
saturation, Opus coding noise) nor an echo tail longer than the filter, so a few percent
of the echo survives it -- audible, and enough to trip the VAD. This stage removes it with
a spectral gain, computed on a 960-point sqrt-Hann STFT with 480-sample hop (weighted
overlap-add; adds exactly one frame, 10 ms, of latency):

    residual(k) = leak(band) * |Y(k)|^2          Y = the linear filter's echo estimate
    gain(k)     = max(floor, 1 - overdrive * residual(k) / |E(k)|^2)

``leak`` -- how much of the estimated echo is still in the error -- is the *minimum* over
the last ~1.6 s of the smoothed per-band ratio |E|^2 / |Y|^2, times a bias factor
(minimum statistics, as noise estimators use it). Between the user's words, and whenever
the user is silent, the ratio falls to the true residual level; the user's voice only
ever raises it. So the estimate holds in double talk, where a plain average of the ratio
would learn the user as "echo" and suppress them. The residual of a saturating speaker
does not follow |Y(k)|^2 closely frame by frame, hence the generous overdrive (8) in
single talk; in double talk (the canceller tells, from how well its echo estimate
explains the mic) the overdrive drops to 1: the user's voice masks the residual, and
every dB of extra suppression would come out of their voice.
"""

from __future__ import annotations

import numpy as np

from pipeline.audio import FRAME_10MS
from pipeline.dsp.fft import irfft

N = 2 * FRAME_10MS
BINS = FRAME_10MS + 1
_WINDOW = np.sqrt(0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(N) / N)).astype(np.float32)
_W2_LO = (_WINDOW[:FRAME_10MS] ** 2).astype(np.float32)
_W2_HI = (_WINDOW[FRAME_10MS:] ** 2).astype(np.float32)
_BAND_EDGES = np.array([0, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 352, BINS])
_BAND_OF_BIN = np.repeat(np.arange(len(_BAND_EDGES) - 1), np.diff(_BAND_EDGES))
_BAND_SUM = (_BAND_OF_BIN[:, None] == np.arange(len(_BAND_EDGES) - 1)).astype(np.float32)


class ResidualEchoSuppressor:
    """Per-frame spectral suppression of echo left by a linear canceller (float32 frames)."""

    def __init__(
        self,
        *,
        floor_db: float = -40.0,
        overdrive: float = 8.0,
        dt_overdrive: float = 1.0,
        bias: float = 4.0,
        tail_decay: float = 0.6,
        window_frames: int = 40,
        windows: int = 4,
    ) -> None:
        self._floor = 10.0 ** (floor_db / 20.0)
        self._overdrive = overdrive
        self._dt_overdrive = dt_overdrive
        self._bias = bias
        self._tail_decay = tail_decay
        bands = len(_BAND_EDGES) - 1
        self._ratio = np.ones(bands, np.float32)  # smoothed |E|^2 / |Y|^2 per band
        self._window_min = np.ones(bands, np.float32)
        self._minima = np.ones((windows, bands), np.float32)  # minima of past sub-windows
        self._window_frames = window_frames
        self._left = window_frames
        self._slot = 0
        self._leak = np.ones(bands, np.float32)
        self._residual = np.zeros(BINS, np.float32)
        self._buf = np.zeros((2, N), np.float32)  # error and echo estimate, last two frames
        self._tail = np.zeros(FRAME_10MS, np.float32)
        self._spec = np.zeros(BINS, np.complex64)
        self._frame = np.zeros(N, np.float32)
        self.gain: np.ndarray = np.ones(BINS, np.float32)  # last gains, for diagnostics

    def bypass(self, e: np.ndarray) -> np.ndarray:
        """Unit gain without FFTs: the exact time-domain equivalent of the WOLA path.

        Keeps the overlap state consistent, so switching between suppression and bypass
        frame by frame is seamless (sqrt-Hann squared sums to one at this hop).
        """
        out = self._tail + _W2_LO * self._buf[0, FRAME_10MS:]
        np.multiply(_W2_HI, e, out=self._tail)
        self._buf[0, FRAME_10MS:] = e
        self._buf[1, FRAME_10MS:] = 0.0
        self._residual *= self._tail_decay
        return out

    def load(self, e: np.ndarray, y: np.ndarray, frames: np.ndarray) -> None:
        """Take this frame's error ``e`` and echo estimate ``y``; write the two windowed
        960-sample analysis frames into ``frames`` (2, 960) for the caller to transform
        along with its own FFTs (one batched call; see the canceller)."""
        buf = self._buf
        buf[:, :FRAME_10MS] = buf[:, FRAME_10MS:]
        buf[0, FRAME_10MS:] = e
        buf[1, FRAME_10MS:] = y
        np.multiply(buf, _WINDOW, out=frames)

    def suppress(self, spec: np.ndarray, *, double_talk: bool = False) -> np.ndarray:
        """The output frame, from the rfft of the frames :meth:`load` wrote (2, 481)."""
        power = spec.real**2 + spec.imag**2
        pe, py = power
        self._learn_leak(power @ _BAND_SUM)
        np.maximum(
            self._leak[_BAND_OF_BIN] * py, self._residual * self._tail_decay, out=self._residual
        )
        overdrive = self._dt_overdrive if double_talk else self._overdrive
        gain = 1.0 - overdrive * self._residual / (pe + 1e-12)  # <= 1: residual >= 0
        np.maximum(gain, self._floor, out=gain)
        self.gain = gain
        np.multiply(spec[0], gain, out=self._spec)
        frame = irfft(self._spec, self._frame)
        frame *= _WINDOW
        out = frame[:FRAME_10MS] + self._tail
        self._tail[:] = frame[FRAME_10MS:]
        return out

    def _learn_leak(self, band_power: np.ndarray) -> None:
        """Minimum statistics of the band ratio |E|^2/|Y|^2 over ``windows`` sub-windows."""
        ratio = band_power[0] / (band_power[1] + 1e-12)
        np.minimum(ratio, 1.0, out=ratio)
        self._ratio += 0.3 * (ratio - self._ratio)
        np.minimum(self._window_min, self._ratio, out=self._window_min)
        self._left -= 1
        if self._left == 0:
            self._minima[self._slot] = self._window_min
            self._slot = (self._slot + 1) % len(self._minima)
            self._window_min[:] = 1.0
            self._left = self._window_frames
        leak = np.minimum(self._minima.min(axis=0), self._window_min)
        np.multiply(leak, self._bias, out=self._leak)
        np.minimum(self._leak, 1.0, out=self._leak)
