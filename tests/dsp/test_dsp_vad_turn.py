"""Voice activity and turn taking, through the whole chain, on labelled mixtures."""

from __future__ import annotations

import numpy as np
import pytest

from bench import signals as sim
from parley.config import Settings
from pipeline.audio import FRAME_10MS, RATE
from pipeline.dsp.base import FrameMeta
from pipeline.dsp.chain import DspChain
from pipeline.dsp.endpoint import EndpointConfig, silence_needed_ms, transcript_cue
from pipeline.dsp.turn import TurnDetector, TurnEvent, TurnEventKind

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


def run_turns(signal: np.ndarray, detector: TurnDetector, hints: dict[int, str | float] | None = None):
    """Events with the input frame index at which each fired; ``hints`` are transcripts
    (str) or end-of-turn model verdicts (float) given to the detector at that frame."""
    chain = DspChain(Settings(aec="numpy"))
    pcm = sim.to_pcm(signal)
    events: list[tuple[int, TurnEvent]] = []
    for n, i in enumerate(range(0, len(pcm), FRAME_10MS)):
        hint = (hints or {}).get(n)
        if isinstance(hint, str):
            detector.hint_transcript(hint)
        elif hint is not None:
            detector.hint_probability(hint)
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
    assert [e.kind for _, e in events] == [K.SPEECH_START, K.SPEECH_CONFIRMED, K.PAUSE, K.END_OF_TURN]
    audio = events[-1][1].audio
    labels = np.nonzero(sim.speech_labels(clip))[0]
    spoken = (labels[-1] + 1 - labels[0]) * FRAME_10MS
    assert audio is not None
    assert spoken <= len(audio) <= spoken + int(0.6 * RATE)  # preroll + kept silence


def test_a_reprobe_asks_again_and_its_verdict_replaces_the_first(user_speech, rng) -> None:
    """With ``reprobe_ms`` the pause is judged a second time; a "complete" there shortens
    the wait that the first verdict ("incomplete") had lengthened."""
    clip = sim.set_level(user_speech[0], -26.0)
    signal = with_room(sim.place(len(clip) + 2 * RATE, [(0.5, clip)]), rng)
    cfg = EndpointConfig(likely_ms=700, default_ms=1300, reprobe_ms=450)
    first, second = [n for n, e in run_turns(signal, TurnDetector(endpoint=cfg)) if e.kind is K.PAUSE]
    assert second - first == 30  # judged at 150 ms and again at 450 ms of silence
    events = run_turns(signal, TurnDetector(endpoint=cfg), {first + 1: 0.1, second + 1: 0.9})
    end = next(n for n, e in events if e.kind is K.END_OF_TURN)
    assert end - first == 55  # 700 ms of silence in all, not 1300


def speech_end_frame(signal: np.ndarray) -> int:
    return int(np.nonzero(sim.speech_labels(signal))[0][-1]) + 1


@pytest.mark.parametrize(
    ("transcript", "probability", "low_ms", "high_ms"),
    [
        # model and transcript agree the question is finished: the shortest wait
        ("Could you tell me what the weather will be like tomorrow in Paris?", 0.95, 400, 650),
        # the model says finished, the transcript is not there yet
        (None, 0.9, 650, 900),
        # no cue at all
        (None, None, 1250, 1500),
        # the model is sure, but the words stop mid-phrase: the longest wait wins
        ("Could you tell me what the weather will be like tomorrow and", 0.97, 1750, 2050),
        ("It was the best of times,", 0.97, 1750, 2050),
        # a full stop the model does not believe: Whisper puts one after every phrase
        ("Could you tell me what the weather will be like tomorrow.", 0.05, 1250, 1500),
    ],
)
def test_end_of_turn_wait_combines_model_and_transcript(user_speech, rng, transcript, probability,
                                                        low_ms, high_ms) -> None:
    """Cues arrive as in a call: the model's verdict 200 ms and the transcript 300 ms after
    the last word."""
    clip = sim.set_level(user_speech[0], -26.0)
    signal = with_room(sim.place(len(clip) + 3 * RATE, [(0.5, clip)]), rng)
    end = speech_end_frame(sim.place(len(signal), [(0.5, clip)]))
    hints: dict[int, str | float] = {}
    if probability is not None:
        hints[end + 20] = probability
    if transcript is not None:
        hints[end + 30] = transcript
    events = run_turns(signal, TurnDetector(), hints)
    eot = [n for n, e in events if e.kind is K.END_OF_TURN]
    assert len(eot) == 1
    added_ms = (eot[0] - end) * 10
    assert low_ms <= added_ms <= high_ms, added_ms
    why = next(e.why for _, e in events if e.kind is K.END_OF_TURN)  # what the logs say
    assert ("model none" if probability is None else f"model {probability:.2f}") in why, why
    assert f"transcript {transcript_cue(transcript)}" in why, why


def test_transcript_cues() -> None:
    assert transcript_cue("What time is it?") == "closed"
    assert transcript_cue("Thank you.") == "closed"  # a pronoun can end a sentence
    assert transcript_cue("I'd like the pasta.") == "closed"
    assert transcript_cue("It was the best of times,") == "open"  # a comma is not an end
    assert transcript_cue("I'd like the pasta and") == "open"
    assert transcript_cue("I'd like the pasta and.") == "open"  # Whisper's habitual full stop
    assert transcript_cue("so, um") == "open"
    assert transcript_cue("because...") == "open"
    assert transcript_cue("I'd like the pasta") is None
    assert transcript_cue("Sandy") is None  # "and" inside a word does not count
    assert transcript_cue("") is None


def test_silence_needed_by_cue() -> None:
    cfg = EndpointConfig(complete_ms=450, likely_ms=700, default_ms=1300, incomplete_ms=1800)
    assert silence_needed_ms(cfg, 0.98, "What time is it?") == 450
    assert silence_needed_ms(cfg, 0.98, "It was the best of times,") == 1800
    assert silence_needed_ms(cfg, 0.98, None) == 700  # the model alone is trusted less
    assert silence_needed_ms(cfg, 0.98, "I'd like the pasta") == 700
    assert silence_needed_ms(cfg, None, "What time is it?") == 1300
    assert silence_needed_ms(cfg, 0.01, "I'd like the pasta") == 1300
    assert silence_needed_ms(cfg, 0.01, "I'd like the pasta.") == 1300
    silence = EndpointConfig(mode="silence", silence_ms=800, incomplete_ms=1800)
    assert silence_needed_ms(silence, 0.99, "What time is it?") == 800
    assert silence_needed_ms(silence, None, "so, um") == 1800


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


def test_evidence_gathered_over_the_echo_is_not_worth_more_once_it_ends() -> None:
    """Residual echo that reads as speech for 300 ms, then the agent's voice ends: its last
    frames, arriving after the echo's reach, must not confirm a barge-in at once (seen under
    load, when the echo came later than the path the canceller had learnt)."""

    def run(clean_speech_frames: int) -> list[TurnEventKind]:
        detector, kinds = TurnDetector(confirm_ms=250, echo_evidence=2.0), []
        pattern = [True] * 30 + [False] * clean_speech_frames  # echo_active, per speech frame
        for n, echo in enumerate(pattern + [False] * 40):
            speech = n < len(pattern)
            meta = FrameMeta(t=n * 0.01, maybe_speech=speech, is_speech=speech, echo_active=echo,
                             speech_probability=0.9 if speech else 0.0,
                             level_db=-30.0 if speech else -60.0, noise_level_db=-60.0)
            event = detector.push(np.zeros(FRAME_10MS, np.int16), meta)
            if event is not None:
                kinds.append(event.kind)
        return kinds

    assert run(4) == [K.SPEECH_START, K.SPEECH_CANCELLED]  # an echo tail: the agent resumes
    assert run(15)[:2] == [K.SPEECH_START, K.SPEECH_CONFIRMED]  # the user talks on: a barge-in


def test_stale_cues_no_longer_shorten_the_wait() -> None:
    detector = TurnDetector(endpoint=EndpointConfig(complete_ms=450, default_ms=900, likely_ms=700))
    assert frames(detector, "s" * 40 + "." * 16)[-1] is K.PAUSE
    detector.hint_probability(0.97)
    detector.hint_transcript("I'd like the pasta.")
    assert detector.end_of_turn_wait_ms() == 450
    frames(detector, "s")  # one more voiced frame: the model judged an ending that was not one
    assert detector.end_of_turn_wait_ms() == 900
    detector.hint_probability(0.97)  # not during speech: only a pause can be judged
    assert detector.end_of_turn_wait_ms() == 900
    frames(detector, "." * 3)
    detector.hint_probability(0.97)
    assert detector.end_of_turn_wait_ms() == 450
    frames(detector, "s" * 40)  # the user went on talking: the transcript covers an old prefix
    assert detector.end_of_turn_wait_ms() == 900


def test_an_interim_that_lands_late_is_judged_by_the_audio_it_heard() -> None:
    """An interim decode takes 0.5-1 s on a loaded machine: one started mid-sentence lands
    after the user has said more and paused. Its "sentence end" describes the audio up to
    where it started, so with 300+ ms of speech since then it must not shorten the wait; one
    of the previous utterance must not count in the next."""
    detector = TurnDetector(endpoint=EndpointConfig(complete_ms=450, default_ms=900, likely_ms=700))
    frames(detector, "s" * 40)
    at = detector.position()  # "I'd like to book a table," goes to Whisper here ...
    assert frames(detector, "s" * 35 + "." * 16)[-1] is K.PAUSE  # "... for two people" [pause]
    detector.hint_probability(0.97)
    detector.hint_transcript("I'd like to book a table.", at)  # ... and comes back now
    assert detector.end_of_turn_wait_ms() == 700  # the model's verdict alone
    detector.hint_transcript("I'd like to book a table for two people.", detector.position())
    assert detector.end_of_turn_wait_ms() == 450
    frames(detector, "." * 50)  # the turn ends; the next utterance begins
    frames(detector, "s" * 40 + "." * 16)
    detector.hint_probability(0.97)
    detector.hint_transcript("Thank you.", at)
    assert detector.end_of_turn_wait_ms() == 700


def test_endless_noise_does_not_keep_the_agent_paused() -> None:
    kinds = frames(TurnDetector(), "m" * 300)
    assert kinds == [K.SPEECH_START, K.SPEECH_CANCELLED]
