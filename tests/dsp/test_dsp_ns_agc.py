"""Noise suppression (RNNoise), noise floor and automatic gain control on generated speech."""

from __future__ import annotations

import numpy as np
import pytest

from bench import signals as sim
from pipeline.audio import FRAME_10MS, RATE
from pipeline.dsp import ns
from pipeline.dsp.agc import AgcStage
from pipeline.dsp.base import FrameMeta
from pipeline.dsp.ns import RnnoiseStage
from pipeline.dsp.vad import WebRtcVad


def run(stage, pcm: np.ndarray, probability: np.ndarray | None = None):
    outs, metas = [], []
    for n, i in enumerate(range(0, len(pcm) - FRAME_10MS + 1, FRAME_10MS)):
        meta = FrameMeta(t=n * 0.01)
        if probability is not None:
            meta.speech_probability = float(probability[n])
        outs.append(stage.process(pcm[i : i + FRAME_10MS], meta))
        metas.append(meta)
    return np.concatenate(outs).astype(np.float32) / 32768.0, metas


def snr_db(x: np.ndarray, speech: np.ndarray) -> float:
    """SNR from frame powers: speech frames minus the noise power seen between them."""
    power = 10.0 ** (sim.frame_levels(x) / 10.0)
    n = min(len(power), len(speech))
    noise = power[:n][~speech[:n]][20:].mean()
    return float(10.0 * np.log10((power[:n][speech[:n]].mean() - noise) / noise))


@pytest.fixture(scope="module")
def talk(user_speech) -> np.ndarray:
    """Three sentences with 1 s gaps, speech at -26 dBFS, 1 s of lead-in."""
    parts, t = [], 1.0
    for clip in user_speech[:3]:
        parts.append((t, sim.set_level(clip, -26.0)))
        t += len(clip) / RATE + 1.0
    return sim.place(int(t * RATE), parts)


@pytest.mark.parametrize("snr_in", [0.0, 10.0])
def test_rnnoise_raises_snr_and_keeps_speech(talk, rng, snr_in: float) -> None:
    noise = sim.pink_noise(len(talk), rng) * 10.0 ** ((-26.0 - snr_in) / 20.0)
    out, _ = run(RnnoiseStage(), sim.to_pcm(talk + noise))
    out = sim.align(out, RnnoiseStage.latency_samples)
    labels = sim.speech_labels(talk)
    gain = snr_db(out, labels) - snr_db(talk + noise, labels)
    assert gain >= 6.0, f"SNR gain {gain:.1f} dB at {snr_in} dB input"
    frames = out[: len(labels) * FRAME_10MS].reshape(-1, FRAME_10MS)
    clean = talk[: len(labels) * FRAME_10MS].reshape(-1, FRAME_10MS)
    kept = sim.rms_db(frames[labels]) - sim.rms_db(clean[labels])
    assert abs(kept) < 2.0, f"speech level changed by {kept:.1f} dB"


def test_rnnoise_speech_probability_separates_speech_from_noise(talk, rng) -> None:
    noise = sim.pink_noise(len(talk), rng) * 10.0 ** (-36.0 / 20.0)
    _, metas = run(RnnoiseStage(), sim.to_pcm(talk + noise))
    p = np.array([m.speech_probability for m in metas])
    labels = sim.speech_labels(talk)[: len(p)]
    assert p[labels].mean() > 0.8 and p[~labels].mean() < 0.35


def test_int8_kernel_stays_with_the_float_network(talk, rng) -> None:
    """The AVX2 kernel runs RNNoise's seven int8 layers in every frame; each layer's output
    stays within 3 % of the float layer's, the audio and speech probability with the float
    path's (the wheel's own library, run in the same process)."""
    noisy = sim.to_pcm(talk + sim.pink_noise(len(talk), rng) * 10.0 ** (-36.0 / 20.0))
    assert ns.use_kernel("float")
    try:
        reference, ref_metas = run(RnnoiseStage(), noisy)
        assert ns.use_kernel("check"), "int8 kernel not available: `make` builds it"
        calls_before, _ = ns.kernel_stats()
        out, metas = run(RnnoiseStage(), noisy)
    finally:
        ns.use_kernel("int8")
    calls, worst = ns.kernel_stats()
    assert calls - calls_before == 7 * len(metas)
    assert worst < 0.03, f"a layer was {worst:.1%} off"
    error_db = sim.rms_db(out - reference) - sim.rms_db(reference)
    assert error_db < -25.0, f"output {error_db:.1f} dB from the float path"
    p, ref_p = (np.array([m.speech_probability for m in ms]) for ms in (metas, ref_metas))
    assert np.abs(p - ref_p).mean() < 0.02


def test_noise_floor_is_tracked_and_not_lifted_by_speech(talk, rng) -> None:
    noise = sim.pink_noise(len(talk), rng) * 10.0 ** (-50.0 / 20.0)
    louder = sim.pink_noise(4 * RATE, rng) * 10.0 ** (-35.0 / 20.0)  # the user walks outside
    _, metas = run(WebRtcVad(), sim.to_pcm(np.concatenate([talk + noise, louder])))
    floor = np.array([m.noise_level_db for m in metas])
    n_talk = len(talk) // FRAME_10MS
    assert floor[n_talk - 1] == pytest.approx(-50.0, abs=3.0)
    assert np.ptp(floor[100:n_talk]) < 3.0  # speech never pulls it up
    assert floor[-1] == pytest.approx(-35.0, abs=3.0)  # a noisier room is followed


def speech_probability(clean: np.ndarray) -> np.ndarray:
    return sim.speech_labels(clean).astype(np.float32)


@pytest.mark.parametrize("level", [-40.0, -6.0])
def test_agc_brings_speech_to_the_target(talk, level: float) -> None:
    clean = talk * 10.0 ** ((level + 26.0) / 20.0)
    agc = AgcStage()
    out, _ = run(agc, sim.to_pcm(clean), speech_probability(clean))
    frames = out.reshape(-1, FRAME_10MS)
    labels = sim.speech_labels(clean)[: len(frames)]
    second_half = np.arange(len(frames)) >= len(frames) // 2
    speech_level = sim.rms_db(frames[labels & second_half])
    assert speech_level == pytest.approx(-18.0, abs=3.0)
    assert np.abs(out).max() <= 10.0 ** (-1.0 / 20.0) + 1e-4  # limiter ceiling


def test_agc_gain_is_frozen_on_noise(talk, rng) -> None:
    """No pumping: after speech, a long noise stretch leaves the gain where it was."""
    clean = talk * 10.0 ** (-14.0 / 20.0)  # quiet talker: the gain goes up
    tail = sim.pink_noise(5 * RATE, rng) * 10.0 ** (-60.0 / 20.0)
    signal = np.concatenate([clean, tail])
    probability = np.concatenate([speech_probability(clean), np.zeros(5 * 100)])
    _, metas = run(AgcStage(), sim.to_pcm(signal), probability)
    gains = np.array([m.gain_db for m in metas])
    n_talk = len(clean) // FRAME_10MS
    assert gains[n_talk - 1] > 6.0
    assert np.ptp(gains[n_talk:]) < 0.01


def test_agc_limiter_catches_a_sudden_shout(talk) -> None:
    quiet = talk * 10.0 ** (-14.0 / 20.0)
    shout = np.clip(talk[RATE : 3 * RATE] * 30.0, -0.99, 0.99)  # peaks at 0 dBFS
    signal = np.concatenate([quiet, shout])
    probability = np.concatenate([speech_probability(quiet), np.ones(200)])
    out, metas = run(AgcStage(), sim.to_pcm(signal), probability)
    assert np.abs(out).max() <= 10.0 ** (-1.0 / 20.0) + 1e-4
    rises = np.diff([m.gain_db for m in metas])
    assert rises.max() <= 0.31  # gain only ever drops fast (limiter attack), never jumps up
