"""The Piper part of the turn-taking set (``bench.piper_speech``): it builds from the installed
voice, its labels say where the audio really pauses and ends, and the hesitations are in
the audio as hesitations (Whisper hears "um", "uh", "so" there, alone).

The bench's figures keep the real recordings and Piper apart: checked on the summaries.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench import piper_speech, turns
from bench.real_speech import MIN_PAUSE_S, find_pauses, normalize_words, voiced_frames, word_errors
from parley.config import Settings
from pipeline.audio import RATE
from pipeline.backends import registry
from pipeline.backends.local_stt import WhisperSTT, only_fillers

pytestmark = pytest.mark.models
TOLERANCE_S = 0.05


@pytest.fixture(scope="module")
def utterances() -> list:
    return piper_speech.piper_utterances()


def test_the_set_builds_with_its_held_out_part(utterances) -> None:
    assert [u.name for u in utterances] == list(piper_speech.SCRIPTS)
    assert {u.name for u in utterances if u.held_out} == piper_speech.HELD_OUT
    assert len(piper_speech.HELD_OUT) * 2 == len(utterances)
    for u in utterances:
        assert u.source == "piper" and u.pcm.dtype == np.int16
        assert u.pauses and u.start_s < u.end_s < u.duration_s - 2.0
        assert "um" not in normalize_words(u.text) and "uh" not in normalize_words(u.text)
        for _, length in u.pauses:
            assert 0.3 - TOLERANCE_S <= length <= 1.2 + TOLERANCE_S


def test_labels_match_the_audio(utterances) -> None:
    """Every labelled pause is a pause in the 48 kHz audio (within 50 ms at both edges), there
    is no unlabelled one, and the speech starts and ends where the labels say."""
    for u in utterances:
        found, first, last = find_pauses(u.pcm, RATE)
        inside = [(s, d) for s, d in found if s < last]
        assert len(inside) == len(u.pauses), (u.name, inside, u.pauses)
        for (s, d), (ls, ld) in zip(inside, u.pauses, strict=True):
            assert abs(s - ls) <= TOLERANCE_S and abs(s + d - ls - ld) <= TOLERANCE_S, (u.name, (s, d), (ls, ld))
        assert abs(first - u.start_s) <= TOLERANCE_S and abs(last - u.end_s) <= TOLERANCE_S


def test_a_sentence_cut_into_pieces_keeps_every_word() -> None:
    """The pieces come from one sentence (its intonation runs on through a pause) and the
    cuts fall between words -- including where the phonemizer runs two words together
    ("with the") -- so joined again they are the whole sentence, and no word is clipped."""
    script = piper_speech.SCRIPTS["dentist"]
    texts = [t for t in script if isinstance(t, str) and t not in piper_speech.HESITATIONS]
    pieces, rate = piper_speech.say_in_pieces(texts)
    whole, _ = piper_speech.say(" ".join(texts))
    assert len(pieces) == len(texts)
    assert 0.8 * len(whole) <= sum(map(len, pieces)) <= len(whole)
    for piece in pieces:
        assert voiced_frames(piece, rate)[[0, -1]].all()  # trimmed to its voiced part


async def test_whisper_hears_the_words_of_the_set(utterances) -> None:
    """No cut clipped a word: offline, Whisper hears the reference words of the set, but for
    one slip of its own at an uncut sentence end ("leave" heard as "lead"). A cut one
    phoneme late turned "with the dentist" into "with a dentist"."""
    stt = registry.get("stt", "local", Settings(stt="local"))
    heard = {u.name: await stt.transcribe(u.pcm, final=True) for u in utterances}
    errors = {u.name: word_errors(u.text, heard[u.name])[0] for u in utterances}
    assert sum(errors.values()) <= 1, {name: heard[name] for name, e in errors.items() if e}


def _pause_ends_at(u, t: float) -> bool:
    return any(abs(s + d - t) <= TOLERANCE_S for s, d in u.pauses)


def _pause_starts_at(u, t: float) -> bool:
    return any(abs(s - t) <= TOLERANCE_S for s, d in u.pauses)


async def test_hesitations_are_fragments_with_pauses_around_them(utterances) -> None:
    stt = registry.get("stt", "local", Settings(stt="local"))
    assert isinstance(stt, WhisperSTT)
    heard = []
    for u in utterances:
        tokens = [t for t in piper_speech.SCRIPTS[u.name] if t in piper_speech.HESITATIONS]
        assert len(u.hesitations) == len(tokens), u.name
        for (a, b), token in zip(u.hesitations, tokens, strict=True):
            frames = voiced_frames(u.pcm, RATE)[int(a * 100) : int(b * 100)]
            assert frames.mean() > 0.6, (u.name, token)  # spoken, not a gap
            assert abs(a - u.start_s) <= TOLERANCE_S or _pause_ends_at(u, a), (u.name, token)
            assert _pause_starts_at(u, b), (u.name, token)
            pad = int(MIN_PAUSE_S * RATE)
            text = await stt.transcribe(u.pcm[int(a * RATE) - pad : int(b * RATE) + pad], final=False)
            assert only_fillers(text) or normalize_words(text) == ["so"], (u.name, token, text)
            heard.append(token)
    assert set(heard) == set(piper_speech.HESITATIONS)


def _row(source: str, held_out: bool, pauses: int, premature: int) -> dict:
    return {"source": source, "held_out": held_out, "pauses": pauses, "premature": premature,
            "latency_ms": 700.0, "words": 10, "errors_offline": 0, "errors_call": 0, "errors_split": 0,
            "lost_words": 0, "stt_ms": []}


def test_a_piper_run_keeps_the_real_rows_and_reports_the_sets_apart() -> None:
    real = [_row("asterisk-prompt", False, 4, 0), _row("conversation", True, 2, 0)]
    old_piper = [_row("piper", False, 3, 3)]
    previous = {"rows": {"smart-turn": real + old_piper}, "measured": {"real": "2026-11-30T10:00:00Z"}}
    fresh = {"rows": {"smart-turn": [_row("piper", False, 3, 1), _row("piper", True, 2, 2)]}, "settings": {}}
    merged = turns.merge(previous, fresh, turns.parse_parts("piper"))
    summary = merged["summary"]["smart-turn"]
    assert list(summary) == ["tuning", "held_out", "piper_tuning", "piper_held_out"]
    assert (summary["tuning"]["pauses"], summary["tuning"]["premature_cuts"]) == (4, 0)
    assert (summary["piper_tuning"]["pauses"], summary["piper_tuning"]["premature_cuts"]) == (3, 1)
    assert summary["piper_held_out"]["premature_cuts"] == 2
    assert merged["measured"]["real"] == "2026-11-30T10:00:00Z" and "piper" in merged["measured"]
    with pytest.raises(ValueError):
        turns.parse_parts("real,espeak")
