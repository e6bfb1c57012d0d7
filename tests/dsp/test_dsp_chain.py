"""The whole chain as a call drives it: the agent must not interrupt itself, the user must."""

from __future__ import annotations

import numpy as np
import pytest

from bench import signals as sim
from parley.config import Settings
from pipeline.audio import FRAME_10MS
from pipeline.dsp.chain import DspChain
from pipeline.dsp.turn import TurnDetector, TurnEventKind

K = TurnEventKind


def barge_in_events(aec: str, scenario: sim.EchoScenario) -> list[tuple[float, TurnEventKind]]:
    """(time in the call, event) for every turn event, the chain fed like a live call."""
    chain = DspChain(Settings(aec=aec))
    turns = TurnDetector()
    events: list[tuple[float, TurnEventKind]] = []
    t0 = 1000.0

    def process(frame: np.ndarray, t: float) -> None:
        out, meta = chain.process(frame, t)
        event = turns.push(out, meta)
        if event is not None:
            events.append((t - t0, event.kind))

    sim.run_call(process, chain.far_end, scenario.mic, scenario.far, t0=t0)
    return events


@pytest.fixture(scope="module")
def call(agent_speech, user_speech) -> sim.EchoScenario:
    rng = np.random.default_rng(11)
    return sim.echo_scenario(agent_speech, np.concatenate(user_speech), rng, 200.0)


def test_the_agent_does_not_barge_in_on_itself_but_the_user_does(call) -> None:
    events = barge_in_events("numpy", call)
    alone = [k for t, k in events if t < 6.0]
    assert K.SPEECH_CONFIRMED not in alone, events
    user_starts = 6.2 + np.argmax(sim.speech_labels(call.near[int(6.2 * 48000) :])) * 0.01
    confirmed = [t for t, k in events if k is K.SPEECH_CONFIRMED and t > 6.0]
    assert confirmed and confirmed[0] - user_starts < 0.6, (user_starts, events)


def test_without_echo_cancellation_the_agent_interrupts_itself(call) -> None:
    """The same call with AEC off: its own echo is taken for a barge-in."""
    events = barge_in_events("off", call)
    assert any(k is K.SPEECH_CONFIRMED and t < 6.0 for t, k in events)


@pytest.mark.parametrize(("aec", "latency_ms"), [("numpy", 20.0), ("apm", 19.0), ("off", 10.0)])
def test_chain_latency_is_reported(aec: str, latency_ms: float) -> None:
    assert DspChain(Settings(aec=aec)).latency_ms == pytest.approx(latency_ms, abs=0.1)


def test_chain_rejects_frames_of_the_wrong_size() -> None:
    chain = DspChain(Settings(aec="numpy"))
    with pytest.raises(ValueError, match="480"):
        chain.process(np.zeros(960, np.int16), 0.0)


def test_chain_frames_are_fresh_arrays() -> None:
    """The turn detector keeps frames: a stage must never hand out a reused buffer."""
    chain = DspChain(Settings(aec="numpy"))
    rng = np.random.default_rng(1)
    outs = [chain.process((rng.standard_normal(FRAME_10MS) * 3000).astype(np.int16), i * 0.01)[0] for i in range(5)]
    assert len({id(o) for o in outs}) == 5
    assert not any(np.shares_memory(a, b) for a in outs for b in outs if a is not b)
