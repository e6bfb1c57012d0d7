"""The room mixer frame by frame: mix-minus, jitter buffering, stalls, the limiter."""

from __future__ import annotations

import numpy as np

from media_server.rooms.mixer import LIMIT, JitterBuffer, Mixer
from pipeline.audio import FRAME_10MS, FRAME_20MS, RATE


def tone(freq: float, amp: float, frames: int) -> list[np.ndarray]:
    """``frames`` 10 ms frames of a sine, int16."""
    t = np.arange(frames * FRAME_10MS) / RATE
    pcm = (amp * np.sin(2 * np.pi * freq * t)).astype(np.int16)
    return list(pcm.reshape(frames, FRAME_10MS))


def run(mixer: Mixer, inputs: dict[str, list[np.ndarray]], ticks: int) -> dict[str, np.ndarray]:
    """Push two 10 ms frames per participant per tick; collect each listener's output."""
    out: dict[str, list[np.ndarray]] = {pid: [] for pid in mixer.buffers}
    for i in range(ticks):
        for pid, frames in inputs.items():
            for f in frames[2 * i: 2 * i + 2]:
                mixer.push(pid, f)
        for pid, pcm in mixer.tick().outputs.items():
            out[pid].append(pcm)
    return {pid: np.concatenate(chunks) for pid, chunks in out.items()}


def energy_at(pcm: np.ndarray, freq: float) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64)))
    bin_ = int(round(freq * pcm.size / RATE))
    return float(spectrum[bin_ - 2: bin_ + 3].max())


def test_each_listener_hears_the_others_and_never_itself() -> None:
    mixer = Mixer(prefetch=2)
    freqs = {"a": 300.0, "b": 700.0, "c": 1100.0}
    for pid in freqs:
        mixer.add(pid)
    out = run(mixer, {pid: tone(f, 6000, 100) for pid, f in freqs.items()}, 50)
    for listener, pcm in out.items():
        for speaker, f in freqs.items():
            level = energy_at(pcm[FRAME_20MS * 5:], f)
            if speaker == listener:
                others = min(energy_at(pcm[FRAME_20MS * 5:], g) for s, g in freqs.items() if s != listener)
                assert 20 * np.log10(others / max(level, 1e-9)) >= 60, (listener, "hears itself")
            else:
                assert level > 1e5, (listener, "does not hear", speaker)


def test_agent_voice_reaches_everyone() -> None:
    mixer = Mixer()
    mixer.add("a")
    mixer.add("b")
    agent = tone(500, 8000, 2)
    result = mixer.tick(np.concatenate(agent))
    for pcm in result.outputs.values():
        assert np.array_equal(pcm, np.concatenate(agent))


def test_a_stalled_participant_contributes_silence_and_recovers() -> None:
    mixer = Mixer(prefetch=2)
    mixer.add("a")
    mixer.add("b")
    a = tone(400, 5000, 40)
    for i in range(10):  # b sends nothing: the room goes on, a is silent to itself
        mixer.push("a", a[2 * i])
        mixer.push("a", a[2 * i + 1])
        result = mixer.tick()
        assert set(result.outputs) == {"a", "b"}
        assert not result.outputs["a"].any()
    assert result.active == {"a"}
    assert mixer.buffers["b"].underruns == 0  # never played, so never ran dry


def test_jitter_buffer_prefetches_drops_oldest_and_refills() -> None:
    buffer = JitterBuffer(prefetch=3, capacity=5)
    frames = tone(200, 1000, 8)
    buffer.push(frames[0])
    buffer.push(frames[1])
    assert buffer.pop20() is None  # still filling
    buffer.push(frames[2])
    assert np.array_equal(buffer.pop20(), np.concatenate(frames[0:2]))
    assert buffer.pop20() is None and buffer.underruns == 1  # one frame left: wait for more
    for f in frames[3:]:
        buffer.push(f)
    for f in frames[:3]:
        buffer.push(f)
    assert len(buffer) == 5 and buffer.dropped == 3


def test_limiter_keeps_loud_sums_out_of_clipping() -> None:
    mixer = Mixer(prefetch=2)
    for pid in "abcd":
        mixer.add(pid)
    inputs = {pid: tone(300 + 10 * i, 30000, 60) for i, pid in enumerate("abcd")}
    out = run(mixer, inputs, 30)
    for pcm in out.values():
        assert np.abs(pcm.astype(np.int32)).max() <= LIMIT + 1
        assert np.abs(pcm[FRAME_20MS * 5:].astype(np.int32)).max() > 0.5 * LIMIT  # limited, not muted
