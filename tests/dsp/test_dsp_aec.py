"""Echo cancellation on a simulated call: both cancellers, the same signals.

The call (see ``bench.signals.echo_scenario``): the agent (Piper) talks through a saturating
loudspeaker into a small room, its echo comes back 40-300 ms later under -70 dBFS of pink
noise; after 6 s the user (espeak-ng) talks over it for 3 s, the agent carries on alone,
then the user talks alone. Every run goes through :class:`EchoStage` exactly as the media
server drives it: 20 ms far-end frames at their send times, 10 ms mic frames at arrival.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pytest

from bench import signals as sim
from pipeline.audio import FRAME_10MS, RATE
from pipeline.dsp.aec import EchoStage, make_canceller
from pipeline.dsp.base import FrameMeta

KINDS = ("numpy", "apm")


@dataclass
class Run:
    scenario: sim.EchoScenario
    out: np.ndarray  # float32, aligned with the input
    metas: list[FrameMeta]
    stage: EchoStage

    def erle(self, start: float, end: float) -> float:
        return sim.erle_db(self.scenario.mic, self.out, start, end)

    def user_snr(self, start: float, end: float, signal: np.ndarray | None = None) -> float:
        """How well the user's voice survives in [start, end): phase-blind spectral SNR."""
        a, b = int(start * RATE), int(end * RATE)
        x = self.out if signal is None else signal
        return sim.spectral_snr_db(self.scenario.near[a:b], x[a:b])


def run_stage(
    kind: str, scenario: sim.EchoScenario, *, jitter_ms: float = 0.0, seed: int = 0
) -> Run:
    stage = EchoStage(make_canceller(kind))
    metas: list[FrameMeta] = []

    def process(frame: np.ndarray, t: float) -> np.ndarray:
        meta = FrameMeta(t=t)
        metas.append(meta)
        return stage.process(frame, meta)

    frames = sim.run_call(
        process, stage.far_end, scenario.mic, scenario.far,
        jitter_ms=jitter_ms, rng=np.random.default_rng(seed),
    )
    out = np.concatenate(frames).astype(np.float32) / 32768.0
    return Run(scenario, sim.align(out, stage.latency_samples), metas, stage)


@pytest.fixture(scope="module")
def runs(agent_speech: np.ndarray, user_speech: list[np.ndarray]):
    """Runs cached per (canceller, delay): several tests read the same call."""
    near = np.concatenate(user_speech)

    @functools.cache
    def get(kind: str, delay_ms: float, delay_change_ms: float = 0.0) -> Run:
        rng = np.random.default_rng(int(delay_ms) + 7)
        scenario = sim.echo_scenario(
            agent_speech, near, rng, delay_ms, delay_change_ms=delay_change_ms
        )
        return run_stage(kind, scenario)

    return get


@pytest.mark.parametrize("delay_ms", [40, 300])
def test_delay_is_found_within_a_second_of_agent_speech(runs, delay_ms: float) -> None:
    run = runs("numpy", delay_ms)
    known = [i for i, m in enumerate(run.metas) if m.echo_delay_ms is not None]
    assert known, "the echo delay was never estimated"
    assert known[0] * 0.01 < 1.0
    # within the filter's 20 ms lead; room reflections may pull the peak a few ms late
    assert run.metas[-1].echo_delay_ms == pytest.approx(delay_ms, abs=8.0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("delay_ms", [40, 300])
def test_erle_in_far_end_single_talk(runs, kind: str, delay_ms: float) -> None:
    run = runs(kind, delay_ms)
    steady = np.concatenate([run.out[3 * RATE : 6 * RATE], run.out[10 * RATE : 13 * RATE]])
    mic = np.concatenate([run.scenario.mic[3 * RATE : 6 * RATE], run.scenario.mic[10 * RATE : 13 * RATE]])
    erle = sim.rms_db(mic) - sim.rms_db(steady)
    assert erle >= 30.0, f"{kind}: steady-state ERLE {erle:.1f} dB"


@pytest.mark.parametrize("kind", KINDS)
def test_double_talk_does_not_wreck_the_filter(runs, kind: str) -> None:
    """Right after 3 s of double talk the agent is still cancelled: no divergence."""
    run = runs(kind, 120)
    before, after = run.erle(3, 6), run.erle(9.5, 13)
    assert after >= 25.0, f"{kind}: ERLE after double talk {after:.1f} dB (before {before:.1f})"


def test_double_talk_keeps_the_users_voice(runs) -> None:
    run = runs("numpy", 120)
    mic_snr = run.user_snr(6.2, 9.0, run.scenario.mic)
    out_snr = run.user_snr(6.2, 9.0)
    assert out_snr >= 14.0 and out_snr >= mic_snr + 12.0, (mic_snr, out_snr)
    a, b = int(6.2 * RATE), int(9.0 * RATE)
    kept = sim.rms_db(run.out[a:b]) - sim.rms_db(run.scenario.near[a:b])
    assert abs(kept) < 2.0, f"user's level changed by {kept:.1f} dB in double talk"


def test_default_canceller_keeps_more_of_the_user_in_double_talk(runs) -> None:
    """Why "numpy" is the default: AEC3's suppressor ducks the user under loud echo."""
    ours, apm = runs("numpy", 120), runs("apm", 120)
    assert ours.user_snr(6.2, 9.0) > apm.user_snr(6.2, 9.0) + 6.0


@pytest.mark.parametrize("kind", KINDS)
def test_user_alone_passes_untouched(runs, kind: str) -> None:
    run = runs(kind, 40)
    snr = run.user_snr(13.5, 15.4)
    assert snr >= 20.0, f"{kind}: user alone comes out at {snr:.1f} dB spectral SNR"


def test_delay_change_is_tracked(runs) -> None:
    """The client's jitter buffer grows by 60 ms at 9 s: lag re-found, echo cancelled again."""
    run = runs("numpy", 120, 60.0)
    assert run.metas[-1].echo_delay_ms == pytest.approx(180.0, abs=8.0)
    assert run.erle(11, 13) >= 25.0


def test_jittery_arrivals_do_not_disturb_the_alignment(agent_speech, user_speech, rng) -> None:
    scenario = sim.echo_scenario(agent_speech, np.concatenate(user_speech), rng, 150)
    run = run_stage("numpy", scenario, jitter_ms=25.0, seed=3)
    assert run.metas[-1].echo_delay_ms is not None
    assert run.erle(3, 6) >= 30.0


def echo_frames(scenario: sim.EchoScenario) -> np.ndarray:
    """Mic frames holding audible echo (ground truth), under the -60 dBFS activity line."""
    return sim.frame_levels(scenario.echo) > -60.0


def test_echo_active_follows_the_agent(runs) -> None:
    run = runs("numpy", 300)
    active = np.array([m.echo_active for m in run.metas])
    echo = echo_frames(run.scenario)[: len(active)]
    assert active[echo].all()  # never echo in the mic without the flag
    assert not active[1400:].any()  # the user alone, the agent silent for > 0.9 s


def test_off_passes_audio_through_but_still_flags_echo(runs) -> None:
    scenario = runs("numpy", 40).scenario
    run = run_stage("off", scenario)
    assert np.array_equal(sim.to_pcm(run.out), sim.to_pcm(scenario.mic))
    active = np.array([m.echo_active for m in run.metas])
    assert active[echo_frames(scenario)[: len(active)]].all()


def test_numpy_canceller_without_far_end_is_an_exact_frame_delay(rng) -> None:
    mic = sim.to_pcm(sim.pink_noise(RATE, rng) * 0.1)
    canceller = make_canceller("numpy")
    assert canceller is not None
    out = np.concatenate([canceller.process(mic[i : i + FRAME_10MS], None) for i in range(0, RATE, FRAME_10MS)])
    assert np.abs(out[FRAME_10MS:].astype(int) - mic[:-FRAME_10MS]).max() <= 1


def test_unknown_canceller_is_rejected() -> None:
    with pytest.raises(ValueError, match="numpy, apm, off"):
        make_canceller("speex")


def test_echo_is_uncertain_only_until_the_canceller_converged(runs) -> None:
    run = runs("numpy", 300)
    uncertain = np.array([m.echo_uncertain for m in run.metas])
    assert uncertain[5:40].all()  # the agent just started: its echo is not cancelled yet
    assert not uncertain[250:].any()


def test_without_an_echo_path_uncertainty_ends(agent_speech, user_speech, rng) -> None:
    """Headphones (or a client with its own AEC): no echo to find, so stop waiting for one."""
    scenario = sim.echo_scenario(agent_speech, np.concatenate(user_speech), rng, 100, echo_dbfs=-110.0)
    run = run_stage("numpy", scenario)
    assert run.metas[-1].echo_delay_ms is None
    assert not any(m.echo_uncertain for m in run.metas[130:])
    assert run.user_snr(6.2, 9.0) >= 20.0  # the user talking over the agent is untouched
