"""The headless client's acoustic echo path (``parley.call.echo``), on known signals: the
agent's voice comes back into the microphone causally, at the requested level and delay,
frame by frame as a real call feeds it -- and mixed with what the user says."""

from __future__ import annotations

import numpy as np
import pytest

from parley.call.echo import EchoPath, LeakyMic
from pipeline.audio import FRAME_10MS, FRAME_20MS, RATE

T0 = 100.0  # monotonic time of the first received frame


def noise(seconds: float, dbfs: float, seed: int = 1) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(int(seconds * RATE)) * 10 ** (dbfs / 20) * 32768
    return np.clip(x, -32768, 32767).astype(np.int16)


def run(path: EchoPath, received: np.ndarray, seconds: float, mic_start: float = T0 - 0.013) -> np.ndarray:
    """Feed ``received`` in 10 ms frames (each at its arrival time) and read the mic in 20 ms
    slots, interleaved as in a call; returns the mic stream from ``mic_start``."""
    frames = received.reshape(-1, FRAME_10MS)
    slots = int(seconds / 0.02)
    out, heard = [], 0
    for k in range(slots):
        t = mic_start + k * 0.02
        while heard < len(frames) and T0 + heard * 0.01 <= t:  # only what has arrived by now
            path.hear(frames[heard], T0 + heard * 0.01)
            heard += 1
        out.append(path.mic(t, FRAME_20MS))
    return np.concatenate(out)


def level_db(x: np.ndarray) -> float:
    x = x.astype(np.float64)
    return 10 * np.log10(np.mean(x * x) + 1e-20)


@pytest.mark.parametrize(("level", "delay_ms"), [(-8.0, 120.0), (-20.0, 40.0)])
def test_echo_is_causal_at_the_requested_level_and_delay(level: float, delay_ms: float) -> None:
    far = np.concatenate([noise(1.0, -26.0), np.zeros(RATE, np.int16)])
    mic = run(EchoPath(level_db=level, delay_ms=delay_ms), far, 2.0) * 32768.0
    onset = int((0.013 + delay_ms / 1000) * RATE)  # where the far end's first sample is due
    assert not mic[: onset - 1].any(), "echo before the sound that causes it"
    lags = np.arange(0, int(0.3 * RATE))
    segment = far[: RATE // 2].astype(np.float64)
    xcorr = [np.dot(mic[lag + int(0.013 * RATE) : lag + int(0.013 * RATE) + segment.size], segment) for lag in lags]
    assert abs(int(np.argmax(xcorr)) - delay_ms / 1000 * RATE) <= 2, "echo not at the requested delay"
    echoed = mic[onset : onset + int(0.9 * RATE)]
    assert abs(level_db(echoed) - level_db(far[: int(0.9 * RATE)]) - level) < 1.0
    assert not mic[onset + RATE + int(0.11 * RATE) :].any(), "echo outlives the room's 100 ms response"


def test_echo_reanchors_after_a_gap_instead_of_drifting() -> None:
    """Frames that stop for 300 ms and come back: their echo is again ``delay`` after them."""
    path = EchoPath(level_db=0.0, delay_ms=100.0)
    burst = noise(0.2, -20.0).reshape(-1, FRAME_10MS)
    for i, frame in enumerate(burst):
        path.hear(frame, T0 + i * 0.01)
    first = [path.mic(T0 + k * 0.02, FRAME_20MS) for k in range(25)]  # T0 .. T0 + 0.5 s
    for i, frame in enumerate(burst):
        path.hear(frame, T0 + 0.5 + i * 0.01)
    second = [path.mic(T0 + 0.5 + k * 0.02, FRAME_20MS) for k in range(25)]
    onset = [next(k for k, s in enumerate(slots) if s.any()) for slots in (first, second)]
    assert onset == [5, 5]  # 100 ms = five 20 ms slots after each burst arrived
    assert path.measured_db is not None and abs(path.measured_db) < 1.5


async def test_leaky_mic_mixes_the_echo_with_what_the_user_says() -> None:
    path = EchoPath(level_db=-8.0, delay_ms=0.0)
    mic = LeakyMic(path)
    user = noise(0.02, -30.0, seed=2)
    mic.play(user)
    far = noise(0.02, -20.0, seed=3).reshape(-1, FRAME_10MS)
    for i, frame in enumerate(far):
        path.hear(frame, T0 + i * 0.01)
    mixed = mic._next_pcm(T0).astype(np.float64)
    echo_alone = EchoPath(level_db=-8.0, delay_ms=0.0)
    for i, frame in enumerate(far):
        echo_alone.hear(frame, T0 + i * 0.01)
    expected = user + echo_alone.mic(T0, FRAME_20MS) * 32768.0
    assert np.max(np.abs(mixed - expected)) <= 1.0
    for i in range(2):  # silence received next: the room's tail still rings in the mic
        path.hear(np.zeros(FRAME_10MS, np.int16), T0 + 0.02 + i * 0.01)
    assert mic._next_pcm(T0 + 0.02).any(), "the room's tail follows the last frame"
