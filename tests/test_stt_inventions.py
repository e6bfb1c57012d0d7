"""Whisper invents words on silence, breath and noise; the local STT must not pass them on.

Real recorded speech (``bench.real_speech``) with the room's silence after it, as the turn
detector hands it over, must come back as the words and nothing more.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench import signals as sim
from parley.config import Settings
from pipeline.audio import RATE
from pipeline.backends import registry
from pipeline.backends.local_stt import WhisperSTT, only_fillers, voiced_span

real_speech = pytest.importorskip("bench.real_speech")
pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def stt() -> WhisperSTT:
    backend = registry.get("stt", "local", Settings(stt="local"))
    assert isinstance(backend, WhisperSTT)
    return backend


@pytest.fixture(scope="module")
def utterances() -> list:
    try:
        return [u for u in real_speech.real_utterances() if not u.held_out][::3]  # 7, all kinds
    except real_speech.MissingSpeech as exc:
        pytest.skip(str(exc))


def test_filler_only_and_voiced_span() -> None:
    assert only_fillers("Um...") and only_fillers(" Hmm. Uh,") and not only_fillers("Um, yes.")
    assert not only_fillers("")
    rng = np.random.default_rng(3)
    quiet = (rng.standard_normal(RATE * 2) * 10).astype(np.int16)  # -70 dBFS hiss
    assert voiced_span(quiet)[2] == 0.0
    tone = np.concatenate([quiet, (np.sin(np.arange(RATE) / 10) * 8000).astype(np.int16), quiet])
    start, end, audible = voiced_span(tone)
    assert abs(start - 2 * RATE + int(0.2 * RATE)) <= 480 and abs(end - 3 * RATE - int(0.2 * RATE)) <= 480
    assert audible == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("kind", ["pink", "breath", "hum"])
async def test_noise_and_breath_give_no_words(stt: WhisperSTT, kind: str) -> None:
    rng = np.random.default_rng(7)
    n = int(2.5 * RATE)
    if kind == "pink":
        signal = sim.pink_noise(n, rng) * 10 ** (-40 / 20)
    elif kind == "breath":  # slow swells of breathy noise, as a sigh into the mic
        envelope = np.maximum(0.0, np.sin(np.arange(n) / RATE * np.pi / 1.2)) ** 2
        signal = sim.pink_noise(n, rng) * envelope * 10 ** (-32 / 20)
    else:
        signal = np.sin(2 * np.pi * 50 * np.arange(n) / RATE) * 10 ** (-30 / 20)
    assert await stt.transcribe(sim.to_pcm(signal.astype(np.float32)), final=True) == ""


async def test_real_speech_with_trailing_silence_keeps_its_words_and_adds_none(stt, utterances) -> None:
    """Each utterance with 1.5 s of the room after it: no invented "Um..." or "you", and the
    words are the ones said (WER through the filter no worse than on the trimmed audio)."""
    invented, errors_tail, errors_trim, words = [], 0, 0, 0
    for u in utterances:
        start = int((u.start_s - 0.2) * RATE)
        with_tail = u.pcm[start : int((u.end_s + 1.5) * RATE)]
        trimmed = u.pcm[start : int((u.end_s + 0.2) * RATE)]
        text = await stt.transcribe(with_tail, final=True)
        extra = set(real_speech.normalize_words(text)) - set(real_speech.normalize_words(u.text))
        invented += sorted(extra & {"um", "uh", "hmm", "you", "thank", "thanks", "bye"})
        errors_tail += real_speech.word_errors(u.text, text)[0]
        errors_trim += real_speech.word_errors(u.text, await stt.transcribe(trimmed, final=True))[0]
        words += len(real_speech.normalize_words(u.text))
    assert invented == []
    assert errors_tail <= errors_trim + 1, (errors_tail, errors_trim, words)
