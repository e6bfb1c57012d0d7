"""Echo canceller in numpy: a partitioned-block frequency-domain adaptive filter (PBFDAF).

The echo of the agent's voice is the far end through the client's loudspeaker, room and
microphone: a linear filter of ~100 ms plus a little distortion. The filter is split into
``partitions`` blocks of 480 taps (one frame each), so each 10 ms frame costs one FFT of
the far end and a multiply-add per partition instead of a 5 760-tap convolution, and the
NLMS step is normalised per frequency bin (speech is very coloured; a time-domain NLMS
would converge on the low bins only).

Double talk is the hard part: while the user talks, the error is mostly their voice and
an adapting filter is pushed away from the echo path. Two filters share the far-end
spectra (as in Speex's MDF and WebRTC's AEC3):

* the *background* filter always adapts, fast;
* the *foreground* filter makes the output and never adapts; it is a copy of the
  background taken when the background has been clearly better for 100 ms *and* the
  foreground's echo estimate still explains the mic (no double talk; until the foreground
  first converges, better is enough);
* when the background is clearly worse (it diverged in double talk) it is reset to the
  foreground.

So double talk can at worst stall the adaptation, never wreck the output. The gradient
constraint (zeroing the wrap-around half of a partition) costs two FFTs, so only one
partition is constrained per frame, in turn. A :class:`ResidualEchoSuppressor` follows.

Cost: numpy's per-call overhead is as large as the arithmetic at this size, so a frame
makes four FFT calls in all (far end; both echo estimates with the constrained partition's
inverse; error, constrained partition and the suppressor's two frames; the suppressor's
output) and the supervisor's five energies come from one 4x4 Gram matrix.
"""

from __future__ import annotations

import numpy as np

from pipeline.audio import FRAME_10MS
from pipeline.dsp.base import to_float, to_int16
from pipeline.dsp.fft import irfft, rfft
from pipeline.dsp.res import ResidualEchoSuppressor

B = FRAME_10MS
BINS = B + 1


class NumpyEchoCanceller:
    """Two-filter PBFDAF + residual echo suppression on float32 frames; 10 ms latency."""

    name = "numpy"
    latency_samples = B

    def __init__(
        self,
        *,
        partitions: int = 12,
        step: float = 1.0,
        smoothing: float = 0.85,
        copy_ratio: float = 0.7,
        restore_ratio: float = 2.0,
        coherence: float = 0.9,
        copy_frames: int = 10,
    ) -> None:
        self.partitions = partitions
        self.span_samples = partitions * B
        self._step = step
        self._smoothing = smoothing
        self._copy_ratio = copy_ratio
        self._restore_ratio = restore_ratio
        self._coherence = coherence
        self._copy_frames = copy_frames
        self.res = ResidualEchoSuppressor()
        p = partitions
        self._x_hist = np.zeros((2 * p, BINS), np.complex64)  # doubled ring: slices never wrap
        self._w = np.zeros((2, p, BINS), np.complex64)  # [background, foreground]
        self._x_time = np.zeros(2 * B, np.float32)
        self._power = np.zeros(BINS, np.float32)
        self._norm = np.zeros(BINS, np.float32)
        self._prod = np.zeros((2, p, BINS), np.complex64)
        # rows: mic, foreground error, background error, foreground echo estimate
        self._rows = np.zeros((4, B), np.float32)
        # inverse batch: both echo estimates, the partition being constrained
        self._inv = np.zeros((3, BINS), np.complex64)
        self._inv_time = np.zeros((3, 2 * B), np.float32)
        # forward batch: [0 | background error], constrained taps, the suppressor's frames
        self._fwd_time = np.zeros((4, 2 * B), np.float32)
        self._fwd = np.zeros((4, BINS), np.complex64)
        self._reset_state()

    def _reset_state(self) -> None:
        self._x_hist[:] = 0.0
        self._w[:] = 0.0
        self._x_time[:] = 0.0
        self._power[:] = 0.0
        self._fwd_time[:2] = 0.0
        self._head = 0
        self._constrain_next = 0
        self._stats = np.zeros(5)  # smoothed: see _supervise
        self._double_talk = False
        self._better_run = 0
        self._converged = False  # the foreground once removed 10 dB: now it is worth protecting

    def reset(self) -> None:
        """Forget the echo path (the alignment moved)."""
        self._reset_state()

    def process(self, near: np.ndarray, far: np.ndarray | None) -> np.ndarray:
        """Cancel the echo of ``far`` (aligned block, float32) in ``near`` (int16)."""
        rows = self._rows
        d = to_float(near, rows[0])
        if far is None:
            return to_int16(self.res.bypass(d))
        xs = self._push_far(far)
        i = self._constrain_next
        self._constrain_next = (i + 1) % self.partitions
        np.multiply(self._w, xs, out=self._prod)
        np.sum(self._prod, axis=1, out=self._inv[:2])
        self._inv[2] = self._w[0, i]
        estimates = irfft(self._inv, self._inv_time)
        np.subtract(d, estimates[0, B:], out=rows[2])
        np.subtract(d, estimates[1, B:], out=rows[1])
        rows[3] = estimates[1, B:]
        fwd_time = self._fwd_time
        fwd_time[0, B:] = rows[2]
        fwd_time[1, :B] = estimates[2, :B]  # partition i without its wrap-around half
        self.res.load(rows[1], rows[3], fwd_time[2:])
        spectra = rfft(fwd_time, self._fwd)
        self._w[0, i] = spectra[1]
        self._adapt(xs, spectra[0])
        gram = rows @ rows.T
        self._supervise(gram[0, 0], gram[1, 1], gram[2, 2], gram[3, 0], gram[3, 3])
        return to_int16(self.res.suppress(spectra[2:], double_talk=self._double_talk))

    def realign(self, shift_blocks: int, history: np.ndarray, residual: int) -> None:
        """The filter window moved ``shift_blocks`` frames further back (more delay).

        The foreground's taps that still fall inside the window are kept (moved to their
        new partition), so a delay change of a few frames costs little re-convergence. ``history`` is the far
        end for the new window, oldest first, (partitions + 1) * 480 samples. ``residual``
        (where the echo starts inside the window) needs no use: the taps find it.
        """
        fg = np.roll(self._w[1], -shift_blocks, axis=0)
        if shift_blocks > 0:
            fg[-shift_blocks:] = 0.0
        elif shift_blocks < 0:
            fg[:-shift_blocks] = 0.0
        # The background may have half-learnt the new path in the old window: restart it
        # from the moved foreground, and let either win until one converges again.
        self._w[:] = fg
        self._converged = False
        p = self.partitions
        windows = np.lib.stride_tricks.sliding_window_view(history, 2 * B)[::B]
        spectra = np.fft.rfft(windows[::-1][:p], axis=1)  # newest first
        self._head = 0
        self._x_hist[:p] = spectra
        self._x_hist[p:] = spectra
        self._x_time[:] = history[-2 * B :]

    def _push_far(self, far: np.ndarray) -> np.ndarray:
        """FFT the newest far window into the ring; return spectra newest-first (p, bins)."""
        self._x_time[:B] = self._x_time[B:]
        self._x_time[B:] = far
        p = self.partitions
        self._head = (self._head - 1) % p
        x = rfft(self._x_time, self._x_hist[self._head])
        self._x_hist[self._head + p] = x
        self._power *= self._smoothing
        self._power += (1.0 - self._smoothing) * (x.real**2 + x.imag**2)
        return self._x_hist[self._head : self._head + p]

    def _adapt(self, xs: np.ndarray, spec: np.ndarray) -> None:
        """NLMS step on the background filter, normalised per bin by the far power.

        Partition ``i``'s constraint was applied just before (on the pre-step taps): its
        step's wrap-around part waits for the partition's next turn, as the others' do.
        """
        norm = self._norm
        np.add(self._power, 1e-2 / BINS * float(self._power.sum()) + 1e-10, out=norm)
        np.divide(self._step / self.partitions, norm, out=norm)
        spec *= norm
        step = np.conjugate(xs, out=self._prod[0])
        step *= spec
        self._w[0] += step

    def _supervise(self, mic: float, fg: float, bg: float, yd: float, yy: float) -> None:
        """Copy background -> foreground when it is better; restore it when it diverged.

        The arguments are this frame's energies: mic, foreground error, background error,
        and the foreground estimate's product with the mic and with itself. Once the foreground
        has converged, a copy also needs its echo estimate to explain the mic (correlation
        above ``coherence``): in double talk a background that happens to fit a bit of the
        user's voice can beat the foreground, but the mic is then no longer just echo. A
        foreground that adds energy (the echo path changed) can always be replaced.
        """
        s = self._stats
        s *= self._smoothing
        s += (1.0 - self._smoothing) * np.array([mic, fg, bg, yd, yy])
        mic, fg, bg, yd, yy = s
        self._converged = self._converged or bool(fg < 0.1 * mic)
        single_talk = bool(yd > self._coherence * np.sqrt(yy * mic + 1e-30))
        self._double_talk = self._converged and not single_talk
        may_copy = not self._converged or single_talk or fg > mic
        if may_copy and bg < self._copy_ratio * fg:
            self._better_run += 1
            if self._better_run >= self._copy_frames:
                self._w[1] = self._w[0]
                s[1] = bg
                self._better_run = 0
            return
        self._better_run = 0
        if bg > self._restore_ratio * fg:
            self._w[0] = self._w[1]
            s[2] = fg
