"""The far-end timeline: ring buffer, mic clock, and the echo delay estimator."""

from __future__ import annotations

import numpy as np
import pytest

from bench import signals as sim
from pipeline.audio import FRAME_10MS, FRAME_20MS, RATE
from pipeline.dsp.delay import DelayEstimator
from pipeline.dsp.farend import RING_SAMPLES, FarEndBuffer, NearClock


def test_far_end_reads_back_what_was_written_across_the_ring_edge(rng) -> None:
    buf = FarEndBuffer()
    pcm = (rng.standard_normal(RING_SAMPLES + 5 * FRAME_20MS) * 3000).astype(np.int16)
    for i in range(0, len(pcm), FRAME_20MS):
        buf.write(pcm[i : i + FRAME_20MS], 10.0 + i / RATE)
    start = buf.end - 3000
    out = buf.read(start, np.empty(1000, np.float32))
    assert np.allclose(out * 32768.0, pcm[start : start + 1000])
    future = buf.read(buf.end - 100, np.empty(300, np.float32))
    assert np.all(future[100:] == 0.0)
    forgotten = buf.read(buf.end - RING_SAMPLES - 200, np.empty(100, np.float32))
    assert np.all(forgotten == 0.0)


def test_a_pause_in_sending_is_filled_with_silence() -> None:
    buf = FarEndBuffer()
    loud = np.full(FRAME_20MS, 5000, np.int16)
    buf.write(loud, 1.0)
    buf.write(loud, 1.5)  # 480 ms of nothing sent in between
    assert buf.end == pytest.approx(2 * FRAME_20MS + 0.48 * RATE, abs=1)
    assert buf.index_at(1.5) == buf.end - FRAME_20MS
    gap = buf.read(FRAME_20MS, np.empty(1000, np.float32))
    assert np.all(gap == 0.0)


def test_only_loud_frames_mark_the_far_end_active() -> None:
    buf = FarEndBuffer()
    buf.write(np.full(FRAME_20MS, 5000, np.int16), 1.0)
    loud_end = buf.end
    buf.write(np.full(FRAME_20MS, 10, np.int16), 1.02)  # -70 dBFS: comfort-noise level
    assert buf.last_active_end == loud_end


def test_mic_clock_ignores_jitter_and_follows_a_stall(rng) -> None:
    clock = NearClock()
    positions = []
    for n in range(600):
        late = rng.uniform(0, 0.03 * RATE) + (0.2 * RATE if n >= 300 else 0)  # stall at 3 s
        positions.append(clock.position(int(10_000 + (n + 1) * FRAME_10MS + late)))
    steps = np.diff([p for p, _ in positions[120:300]])
    assert np.all(steps == FRAME_10MS)  # smooth despite 30 ms of arrival jitter
    jumps = [n for n, (_, jumped) in enumerate(positions) if jumped and n > 100]
    assert len(jumps) == 1 and 300 <= jumps[0] <= 500
    after = positions[-1][0] - (10_000 + 600 * FRAME_10MS)
    assert 0.19 * RATE <= after <= 0.23 * RATE


def feed(est: DelayEstimator, far: np.ndarray, near: np.ndarray) -> list[int | None]:
    seen = []
    for i in range(0, len(far) - FRAME_10MS + 1, FRAME_10MS):
        est.push(near[i : i + FRAME_10MS], far[i : i + FRAME_10MS], True)
        seen.append(est.delay)
    return seen


def test_delay_estimate_is_sample_accurate_at_4khz_resolution(user_speech) -> None:
    far = sim.set_level(np.concatenate(user_speech), -20.0)[: 6 * RATE]
    lag = int(0.437 * RATE)
    near = 0.3 * sim.delay(far, 437.0)
    seen = feed(DelayEstimator(), far, near)
    assert seen[-1] is not None and abs(seen[-1] - lag) <= 12  # one 4 kHz sample
    assert seen.index(seen[-1]) * 0.01 < 1.5


def test_delay_estimate_survives_a_louder_near_end_talker(user_speech, rng) -> None:
    far = sim.set_level(np.concatenate(user_speech), -20.0)[: 8 * RATE]
    talker = sim.set_level(np.roll(np.concatenate(user_speech[::-1]), 12345), -20.0)[: 8 * RATE]
    echo = 0.1 * sim.delay(far, 180.0)
    near = echo + np.where(np.arange(len(far)) > 3 * RATE, talker, 0.0)  # user 20 dB louder
    seen = feed(DelayEstimator(), far, near.astype(np.float32))
    assert seen[-1] is not None and abs(seen[-1] - int(0.18 * RATE)) <= 12


def test_no_estimate_without_an_echo(user_speech, rng) -> None:
    far = sim.set_level(np.concatenate(user_speech), -20.0)[: 4 * RATE]
    near = sim.pink_noise(len(far), rng) * 0.01
    assert feed(DelayEstimator(), far, near)[-1] is None


def test_a_long_pause_keeps_the_timeline_in_step_with_the_clock() -> None:
    """Longer than the ring: the index still advances by the whole pause."""
    buf = FarEndBuffer()
    buf.write(np.full(FRAME_20MS, 5000, np.int16), 1.0)
    buf.write(np.full(FRAME_20MS, 5000, np.int16), 4.0)
    assert buf.index_at(4.02) == pytest.approx(3.02 * RATE, abs=1)
    assert np.all(buf.read(buf.end - FRAME_20MS - 1000, np.empty(1000, np.float32)) == 0.0)
