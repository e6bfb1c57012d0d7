"""Echo path delay estimation: where in the far end is the echo in this mic frame?

The adaptive filters only span ~120 ms, but the echo comes back 40-500 ms after it was
sent (network RTT, the client's jitter buffer and audio output). So a separate estimator
finds the lag and the filter is placed there. It is a generalised cross-correlation with
phase transform (GCC-PHAT) between far end and mic, both decimated to 4 kHz:

* PHAT whitening makes the peak sharp for speech and robust to the room's colouring,
  to the loudspeaker's saturation and to Opus;
* the cross-spectrum is averaged over successive 256 ms windows, only while the far end
  is loud, so the near-end talker (uncorrelated with the far end) averages out in
  double talk instead of dragging the estimate;
* a new lag is accepted only when two consecutive estimates agree, so one bad window
  cannot move the filter.

The correlation runs every 200 ms (three 4096-point FFTs, ~100 us), not every frame.
"""

from __future__ import annotations

import numpy as np

from pipeline.audio import FRAME_10MS, RATE

DECIMATION = 12  # 48 kHz -> 4 kHz
DEC_RATE = RATE // DECIMATION
DEC_FRAME = FRAME_10MS // DECIMATION
NFFT = 4096


class DelayEstimator:
    """Tracks the far-to-mic lag (in 48 kHz samples) from frame pairs on one timeline."""

    def __init__(
        self,
        *,
        max_delay_ms: float = 520.0,
        window_ms: float = 256.0,
        update_every: int = 20,
        smoothing: float = 0.6,
        min_peak_ratio: float = 7.0,
        agree_ms: float = 2.0,
    ) -> None:
        self.max_lag = int(max_delay_ms * DEC_RATE / 1000)
        self.window = int(window_ms * DEC_RATE / 1000)
        if self.window + self.max_lag > NFFT:
            raise ValueError("window + max delay exceed the correlation size")
        self._span = self.window + self.max_lag
        self._update_every = update_every
        self._smoothing = smoothing
        self._min_peak_ratio = min_peak_ratio
        self._agree = max(1, int(agree_ms * DEC_RATE / 1000))
        self._band = np.fft.rfftfreq(NFFT, 1.0 / DEC_RATE) >= 150.0  # below: hum, no speech
        self._far = np.zeros(4 * self._span, np.float32)
        self._near = np.zeros(4 * self._span, np.float32)
        self._cross = np.zeros(NFFT // 2 + 1, np.complex64)
        self.reset()

    def reset(self) -> None:
        """Forget everything (the timelines moved relative to each other)."""
        self._far[:] = 0.0
        self._near[:] = 0.0
        self._fill = self._span
        self._cross[:] = 0.0
        self._countdown = self._update_every
        self._candidate: int | None = None
        self.delay: int | None = None  # accepted lag in 48 kHz samples
        self.peak_ratio = 0.0

    def push(self, near: np.ndarray, far: np.ndarray, far_loud: bool) -> bool:
        """Add one 10 ms frame pair (float32, 480 each; ``far`` at lag 0).

        ``far_loud`` says the far end carried audio within the correlation span; windows
        without it say nothing about the echo path. Returns True when ``delay`` changed.
        """
        self._append(near, far)
        self._countdown -= 1
        if self._countdown > 0:
            return False
        self._countdown = self._update_every
        return far_loud and self._update()

    def _append(self, near: np.ndarray, far: np.ndarray) -> None:
        if self._fill + DEC_FRAME > len(self._far):
            keep = self._span - DEC_FRAME
            self._far[:keep] = self._far[self._fill - keep : self._fill]
            self._near[:keep] = self._near[self._fill - keep : self._fill]
            self._fill = keep
        end = self._fill + DEC_FRAME
        far.reshape(DEC_FRAME, DECIMATION).sum(axis=1, out=self._far[self._fill : end])
        near.reshape(DEC_FRAME, DECIMATION).sum(axis=1, out=self._near[self._fill : end])
        self._fill = end

    def _update(self) -> bool:
        far = self._far[self._fill - self._span : self._fill]
        near = self._near[self._fill - self.window : self._fill]
        cross = np.fft.rfft(far, NFFT) * np.conj(np.fft.rfft(near, NFFT))
        self._cross *= self._smoothing
        self._cross += (1.0 - self._smoothing) * cross
        whitened = np.where(self._band, self._cross / (np.abs(self._cross) + 1e-20), 0.0)
        # corr[j] = sum_t near[t] * far[t + j]; the echo of lag L peaks at j = max_lag - L
        corr = np.fft.irfft(whitened, NFFT)[: self.max_lag + 1]
        j = int(np.argmax(corr))
        rms = float(np.sqrt(np.mean(corr * corr))) + 1e-20
        self.peak_ratio = float(corr[j]) / rms
        if self.peak_ratio < self._min_peak_ratio:
            self._candidate = None
            return False
        return self._accept((self.max_lag - j) * DECIMATION)

    def _accept(self, lag: int) -> bool:
        """Take ``lag`` once two estimates in a row agree; report whether it moved."""
        agree = self._candidate is not None and abs(lag - self._candidate) <= self._agree * DECIMATION
        self._candidate = lag
        if not agree or (self.delay is not None and abs(lag - self.delay) <= DECIMATION):
            return False
        self.delay = lag
        return True
