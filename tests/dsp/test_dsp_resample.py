"""Format conversion at the chain's edges: aiortc stereo 48 kHz, SIP 8 kHz, and back."""

from __future__ import annotations

import av
import numpy as np
import pytest

from pipeline.audio import FRAME_10MS, RATE
from pipeline.dsp.resample import FrameResampler


def tone(freq: float, rate: int, seconds: float, amplitude: float = 8000.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def dominant_freq(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1.0 / rate)[np.argmax(spectrum)])


def aiortc_frames(left: np.ndarray, right: np.ndarray) -> list[av.AudioFrame]:
    """What aiortc's Opus decoder yields: packed s16 stereo, 960 samples, RTP-ish pts."""
    frames = []
    for i in range(0, len(left) - 959, 960):
        packed = np.empty(2 * 960, np.int16)
        packed[0::2], packed[1::2] = left[i : i + 960], right[i : i + 960]
        frame = av.AudioFrame.from_ndarray(packed.reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate = RATE
        frame.pts = i + (48000 if i > 48000 else 0)  # a timestamp jump, as after a loss
        frames.append(frame)
    return frames


def test_aiortc_stereo_becomes_exact_mono_10ms_frames() -> None:
    mono = tone(440.0, RATE, 2.0)
    conv = FrameResampler()
    out = [f for frame in aiortc_frames(mono, mono) for f in conv.push(frame)]
    assert all(f.dtype == np.int16 and f.shape == (FRAME_10MS,) for f in out)
    joined = np.concatenate(out)
    assert len(joined) == len(mono)  # nothing inserted at the pts jump, nothing lost
    assert np.abs(joined.astype(int) - mono).max() <= 1


def test_stereo_is_averaged_to_mono() -> None:
    left, right = tone(440.0, RATE, 0.5), np.zeros(RATE // 2, np.int16)
    conv = FrameResampler()
    joined = np.concatenate([f for fr in aiortc_frames(left, right) for f in conv.push(fr)])
    ratio = np.std(joined.astype(float)) / np.std(left.astype(float))
    assert ratio == pytest.approx(0.5, abs=0.02)


def test_sip_8khz_up_to_48khz_keeps_pitch_and_level() -> None:
    pcm = tone(1000.0, 8000, 1.0)
    conv = FrameResampler()
    out = [f for i in range(0, len(pcm), 160) for f in conv.push_pcm(pcm[i : i + 160], 8000)]
    out += conv.flush()
    joined = np.concatenate(out)
    assert all(len(f) == FRAME_10MS for f in out)
    assert abs(len(joined) - 6 * len(pcm)) <= FRAME_10MS
    steady = joined[4800:-4800].astype(float)
    assert dominant_freq(steady, RATE) == pytest.approx(1000.0, abs=5.0)
    assert np.std(steady) == pytest.approx(np.std(pcm.astype(float)), rel=0.05)


def test_back_to_8khz_in_20ms_frames_is_continuous() -> None:
    """Streaming 10 ms at a time gives the same audio as converting the whole signal:
    the resampler keeps its filter state, so there are no clicks at frame edges."""
    pcm = tone(700.0, RATE, 1.0)
    streamed = FrameResampler(rate=8000, frame_samples=160)
    out = [f for i in range(0, len(pcm), FRAME_10MS) for f in streamed.push_pcm(pcm[i : i + FRAME_10MS], RATE)]
    whole = FrameResampler(rate=8000, frame_samples=160)
    reference = np.concatenate(whole.push_pcm(pcm, RATE))
    joined = np.concatenate(out)
    assert all(len(f) == 160 for f in out)
    n = min(len(joined), len(reference))
    assert np.abs(joined[:n].astype(int) - reference[:n]).max() <= 1


def test_stereo_output_is_interleaved() -> None:
    pcm = tone(300.0, RATE, 0.1)
    conv = FrameResampler(layout="stereo", frame_samples=960)
    out = conv.push_pcm(pcm, RATE)
    assert [f.shape for f in out] == [(1920,)] * 5
    assert np.array_equal(out[0][0::2], out[0][1::2])


def test_bad_layouts_are_rejected() -> None:
    with pytest.raises(ValueError):
        FrameResampler(layout="5.1")
    with pytest.raises(ValueError):
        FrameResampler().push_pcm(np.zeros(3, np.int16), RATE, "stereo")
