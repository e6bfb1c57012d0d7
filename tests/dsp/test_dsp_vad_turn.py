"""Voice activity and turn taking, through the whole chain, on labelled mixtures."""

from __future__ import annotations

import numpy as np
import pytest

from parley.config import Settings
from pipeline.audio import FRAME_10MS, RATE
from pipeline.dsp import simulate as sim
from pipeline.dsp.base import FrameMeta
from pipeline.dsp.chain import DspChain
from pipeline.dsp.turn import TurnDetector, TurnEvent, TurnEventKind, transcript_wait_ms

K = TurnEventKind
TOLERANCE_FRAMES = 15  # label edges are fuzzy: precision allows VAD frames within 150 ms


def chain_metas(signal: np.ndarray) -> list[FrameMeta]:
    chain = DspChain(Settings(aec="numpy"))
    pcm = sim.to_pcm(signal)
    lag = int(chain.latency_ms / 10)
    metas = [chain.process(pcm[i : i + FRAME_10MS], i / RATE)[1] for i in range(0, len(pcm), FRAME_10MS)]
    return metas[lag:]  # line the decisions up with the input frames


def precision_recall(decisions: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    n = min(len(decisions), len(labels))
    decisions, labels = decisions[:n], labels[:n]
    near_speech = np.convolve(labels, np.ones(2 * TOLERANCE_FRAMES + 1), "same") > 0
    precision = (decisions & near_speech).sum() / max(1, decisions.sum())
    recall = (decisions & labels).sum() / labels.sum()
    return float(precision), float(recall)


@pytest.fixture(scope="module")
def talk(user_speech) -> np.ndarray:
    parts, t = [], 1.0
    for clip in user_speech[:3]:
        parts.append((t, sim.set_level(clip, -26.0)))
        t += len(clip) / RATE + 1.5
    return sim.place(int(t * RATE), parts)


@pytest.mark.parametrize("noise_kind", ["pink", "white"])
@pytest.mark.parametrize("snr", [10.0, 0.0])
def test_vad_precision_and_recall(talk, rng, noise_kind: str, snr: float) -> None:
    noise = sim.pink_noise(len(talk), rng) if noise_kind == "pink" else rng.standard_normal(len(talk))
    metas = chain_metas(talk + noise.astype(np.float32) * 10.0 ** ((-26.0 - snr) / 20.0))
    decisions = np.array([m.is_speech for m in metas])
    precision, recall = precision_recall(decisions, sim.speech_labels(talk))
    assert precision >= 0.97 and recall >= 0.95, (precision, recall)


def test_vad_stays_quiet_on_noise_and_clicks(rng) -> None:
    """Fan noise with keyboard-like clicks: loud, impulsive, and not a voice."""
    noise = sim.pink_noise(6 * RATE, rng) * 10.0 ** (-40.0 / 20.0)
    for start in rng.integers(0, 6 * RATE - 2000, 40):
        noise[start : start + 400] += rng.standard_normal(400).astype(np.float32) * np.exp(-np.arange(400) / 60.0) * 0.3
    metas = chain_metas(noise)
    false_alarms = np.mean([m.is_speech for m in metas[50:]])
    assert false_alarms < 0.01
    assert metas[-1].noise_level_db == pytest.approx(-40.0, abs=5.0)


def run_turns(signal: np.ndarray, detector: TurnDetector, hints: dict[int, str] | None = None):
    """Events with the input frame index at which each fired."""
    chain = DspChain(Settings(aec="numpy"))
    pcm = sim.to_pcm(signal)
    events: list[tuple[int, TurnEvent]] = []
    for n, i in enumerate(range(0, len(pcm), FRAME_10MS)):
        if hints and n in hints:
            detector.hint_transcript(hints[n])
        frame, meta = chain.process(pcm[i : i + FRAME_10MS], n * 0.01)
        event = detector.push(frame, meta)
        if event is not None:
            events.append((n, event))
    return events


def cough(rng: np.random.Generator) -> np.ndarray:
    """A 100 ms burst: band-limited noise with a sharp attack, like a cough or a thump."""
    n = int(0.1 * RATE)
    burst = sim.pink_noise(n, rng) * np.minimum(1.0, np.arange(n) / 240.0) * np.exp(-np.arange(n) / 2400.0)
    return (burst * 10.0 ** (-14.0 / 20.0)).astype(np.float32)


def with_room(signal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return signal + sim.pink_noise(len(signal), rng) * 10.0 ** (-65.0 / 20.0)


def test_a_cough_pauses_then_resumes_never_barges_in(rng) -> None:
    signal = with_room(sim.place(2 * RATE, [(0.8, cough(rng))]), rng)
    kinds = [e.kind for _, e in run_turns(signal, TurnDetector())]
    assert kinds == [K.SPEECH_START, K.SPEECH_CANCELLED]


def test_a_sentence_starts_confirms_and_ends(user_speech, rng) -> None:
    clip = sim.set_level(user_speech[0], -26.0)
    signal = with_room(sim.place(len(clip) + 2 * RATE, [(0.5, clip)]), rng)
    events = run_turns(signal, TurnDetector())
    assert [e.kind for _, e in events] == [K.SPEECH_START, K.SPEECH_CONFIRMED, K.END_OF_TURN]
    audio = events[-1][1].audio
    labels = np.nonzero(sim.speech_labels(clip))[0]
    spoken = (labels[-1] + 1 - labels[0]) * FRAME_10MS
    assert audio is not None
    assert spoken <= len(audio) <= spoken + int(0.6 * RATE)  # preroll + kept silence


def speech_end_frame(signal: np.ndarray) -> int:
    return int(np.nonzero(sim.speech_labels(signal))[0][-1]) + 1


@pytest.mark.parametrize(
    ("hint", "low_ms", "high_ms"),
    [
        ("Could you tell me what the weather will be like tomorrow in Paris?", 0, 300),
        (None, 450, 750),
        ("Could you tell me what the weather will be like tomorrow and", 1100, 1500),
    ],
)
def test_end_of_turn_wait_follows_the_transcript(user_speech, rng, hint, low_ms, high_ms) -> None:
    """The interim transcript arrives 100 ms after the last word (an STT keeping up)."""
    clip = sim.set_level(user_speech[0], -26.0)
    signal = with_room(sim.place(len(clip) + 3 * RATE, [(0.5, clip)]), rng)
    end = speech_end_frame(sim.place(len(signal), [(0.5, clip)]))
    hints = {end + 10: hint} if hint else None
    events = run_turns(signal, TurnDetector(), hints)
    eot = [n for n, e in events if e.kind is K.END_OF_TURN]
    assert len(eot) == 1
    added_ms = (eot[0] - end) * 10
    assert low_ms <= added_ms <= high_ms, added_ms


def test_transcript_rules() -> None:
    wait = {"default": 500, "sentence_end": 150, "trailing": 1200}
    assert transcript_wait_ms("What time is it?", **wait) == 150
    assert transcript_wait_ms("I'd like the pasta.", **wait) == 150
    assert transcript_wait_ms("I'd like the pasta and", **wait) == 1200
    assert transcript_wait_ms("so, um", **wait) == 1200
    assert transcript_wait_ms("because", **wait) == 1200
    assert transcript_wait_ms("I'd like the pasta", **wait) == 500
    assert transcript_wait_ms("Sandy", **wait) == 500  # "and" inside a word does not count
    assert transcript_wait_ms("", **wait) == 500


def frames(detector: TurnDetector, pattern: str, *, echo: bool = False) -> list[TurnEventKind]:
    """Drive the detector with synthetic VAD output: 'm' maybe, 's' speech, '.' silence."""
    kinds = []
    for n, c in enumerate(pattern):
        meta = FrameMeta(
            t=n * 0.01, maybe_speech=c in "ms", is_speech=c == "s", echo_active=echo,
            level_db=-30.0 if c in "ms" else -60.0, noise_level_db=-60.0,
        )
        event = detector.push(np.zeros(FRAME_10MS, np.int16), meta)
        if event is not None:
            kinds.append(event.kind)
    return kinds


def test_agent_echo_demands_more_evidence_for_onset_and_barge_in() -> None:
    assert frames(TurnDetector(), "mmm" + "." * 35) == [K.SPEECH_START, K.SPEECH_CANCELLED]
    assert frames(TurnDetector(), "mmm" + "." * 35, echo=True) == []
    speech = "s" * 30 + "." * 60
    assert frames(TurnDetector(), speech)[:2] == [K.SPEECH_START, K.SPEECH_CONFIRMED]
    assert K.SPEECH_CONFIRMED not in frames(TurnDetector(), speech, echo=True)


def test_a_stale_hint_no_longer_shortens_the_wait() -> None:
    detector = TurnDetector()
    frames(detector, "s" * 40)
    detector.hint_transcript("I'd like the pasta.")
    assert detector.end_of_turn_wait_ms() == 150
    frames(detector, "s" * 40)  # the user went on talking: the hint covers an old prefix
    assert detector.end_of_turn_wait_ms() == 500


def test_endless_noise_does_not_keep_the_agent_paused() -> None:
    kinds = frames(TurnDetector(), "m" * 300)
    assert kinds == [K.SPEECH_START, K.SPEECH_CANCELLED]
