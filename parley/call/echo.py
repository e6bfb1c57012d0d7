"""A laptop's loudspeaker and microphone without echo cancellation, for the headless client.

A browser normally cancels the agent's voice in its own microphone; a laptop without that
(or a phone on speaker) sends it back to the server, and the server must neither take it
for the user nor miss the user talking over it. :class:`EchoPath` plays that room: what
the client receives goes through a small loudspeaker (soft saturation) and a short
synthetic room impulse response, attenuated to ``level_db`` and delayed by ``delay_ms``,
and :class:`LeakyMic` mixes it into whatever the client is saying.

Causal and frame by frame, in real time: :meth:`EchoPath.hear` takes each received frame
with its arrival time (the moment it is "played"), :meth:`EchoPath.mic` hands out the echo
due in each 20 ms microphone slot. The echo stream stays contiguous while frames arrive
on schedule (no clicks from network jitter) and re-anchors at ``arrival + delay`` when
they stop or drift by more than :data:`RESYNC_S`, so the delay never creeps.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from media_server.agent_track import AgentTrack
from pipeline.audio import RATE

RESYNC_S = 0.04  # a received frame this far off the contiguous echo stream re-anchors it
IR_LENGTH_S = 0.1


def room_impulse_response(rt60_s: float = 0.15, length_s: float = IR_LENGTH_S, seed: int = 7) -> np.ndarray:
    """A small room seen from a laptop: direct path at sample 0, four early reflections
    (2-11 ms), an exponentially decaying diffuse tail (-60 dB after ``rt60_s``); unit energy,
    so a broadband signal comes out at the level it went in."""
    n = int(length_s * RATE)
    t = np.arange(n) / RATE
    ir = np.random.default_rng(seed).standard_normal(n) * 10.0 ** (-3.0 * t / rt60_s) * 0.05
    ir[: int(0.003 * RATE)] = 0.0
    for ms, gain in ((2.1, 0.55), (4.7, -0.35), (7.9, 0.25), (11.3, -0.18)):
        ir[int(ms * RATE / 1000)] += gain
    ir[0] = 1.0
    return (ir / np.sqrt(np.sum(ir * ir))).astype(np.float32)


class EchoPath:
    """The agent's voice as the client's microphone hears it: ``level_db`` relative to what
    was received (unit-energy room response), ``delay_ms`` after it arrived."""

    def __init__(self, level_db: float = -8.0, delay_ms: float = 120.0, drive: float = 1.0,
                 ir: np.ndarray | None = None) -> None:
        self.gain = 10.0 ** (level_db / 20.0)
        self.delay_s = delay_ms / 1000.0
        self.drive = drive
        self.ir = room_impulse_response() if ir is None else np.asarray(ir, np.float32)
        self._spectra: dict[int, np.ndarray] = {}  # FFT size -> the room's spectrum
        self._tail = np.zeros(self.ir.size - 1, np.float32)  # convolution overhang
        self._stream = np.zeros(0, np.float32)  # echo not yet in the mic
        self._stream_t = 0.0  # when _stream[0] is due in the mic
        self.far_energy = 0.0  # sums of squares heard and echoed: the level actually produced
        self.echo_energy = 0.0

    def hear(self, pcm: np.ndarray, t: float) -> None:
        """The client played ``pcm`` (48 kHz int16) at monotonic time ``t``."""
        x = pcm.astype(np.float32) / 32768.0
        self.far_energy += float(np.dot(x, x))
        speaker = np.tanh(self.drive * x) / self.drive
        y = self._convolve(speaker) * self.gain
        due = t + self.delay_s
        end = self._stream_t + self._stream.size / RATE
        if self._stream.size == 0 or abs(due - end) > RESYNC_S:  # idle or off schedule: re-anchor
            self._stream, self._stream_t = y, due
        else:
            self._stream = np.concatenate([self._stream, y])

    def mic(self, t: float, samples: int) -> np.ndarray:
        """The echo (float, full scale 1.0) in the microphone slot of ``samples`` from ``t``."""
        out = np.zeros(samples, np.float32)
        start = round((t - self._stream_t) * RATE)  # where the slot begins in the stream
        lo, hi = max(start, 0), min(start + samples, self._stream.size)
        if hi > lo:
            out[lo - start : hi - start] = self._stream[lo:hi]
        if start + samples > 0:  # consumed (or stale) up to the slot's end
            keep = max(start + samples, 0)
            self._stream = self._stream[keep:]
            self._stream_t += keep / RATE
        self.echo_energy += float(np.dot(out, out))
        return out

    @property
    def measured_db(self) -> float | None:
        """Echo energy over received energy so far (dB): the level the room really produced."""
        if self.far_energy <= 0 or self.echo_energy <= 0:
            return None
        return 10.0 * float(np.log10(self.echo_energy / self.far_energy))

    def _convolve(self, x: np.ndarray) -> np.ndarray:
        """Overlap-add FFT convolution of one frame with the room, carrying the tail."""
        length = x.size + self.ir.size - 1
        nfft = 1 << (length - 1).bit_length()
        spectrum = self._spectra.get(nfft)
        if spectrum is None:
            spectrum = self._spectra[nfft] = np.fft.rfft(self.ir, nfft)
        y = np.fft.irfft(np.fft.rfft(x, nfft) * spectrum, nfft)[:length].astype(np.float32)
        y[: self._tail.size] += self._tail
        self._tail = y[x.size :].copy()
        return y[: x.size]


class LeakyMic(AgentTrack):
    """The client's paced microphone track, plus the room's echo of what it received."""

    def __init__(self, path: EchoPath, on_sent: Callable[[np.ndarray, float], None] | None = None) -> None:
        super().__init__(on_sent=on_sent)
        self.path = path

    def _next_pcm(self, t_send: float) -> np.ndarray:
        user = super()._next_pcm(t_send)
        echo = self.path.mic(t_send, user.size)
        if not echo.any():
            return user
        mixed = user.astype(np.float32) + echo * 32768.0
        return np.clip(mixed, -32768, 32767).astype(np.int16)
