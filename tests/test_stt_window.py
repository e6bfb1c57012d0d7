"""The local Whisper encoder reads the utterance and 10 s of silence, not always 30 s
(``PARLEY_STT_WINDOW_S``): a short turn decodes ~1.8x faster, and the words stay."""

from __future__ import annotations

import numpy as np
import pytest
from faster_whisper.audio import pad_or_trim

from parley.config import Settings
from pipeline.backends.local_stt import WHISPER_RATE, ShortWindowWhisper, WhisperSTT

real_speech = pytest.importorskip("bench.real_speech")
pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def short() -> WhisperSTT:
    return WhisperSTT(Settings(stt="local", stt_window_s=15))


@pytest.fixture(scope="module")
def full() -> WhisperSTT:
    return WhisperSTT(Settings(stt="local", stt_window_s=30))


def _encoded_frames(model: ShortWindowWhisper, seconds: float) -> int:
    """Encoder positions for ``seconds`` of audio, padded as faster-whisper pads it."""
    rng = np.random.default_rng(1)
    audio = (rng.standard_normal(int(seconds * WHISPER_RATE)) * 0.1).astype(np.float32)
    features = pad_or_trim(model.feature_extractor(audio)[:, :-1])
    return int(model.encode(features).shape[1])


def test_encoder_window_follows_the_audio(short: WhisperSTT, full: WhisperSTT) -> None:
    # the encoder halves the mel frames: 15 s -> 750 positions, 30 s -> 1500
    assert _encoded_frames(short._model, 3.0) == 750  # the 15 s floor
    assert _encoded_frames(short._model, 12.0) == 1100  # 12 s + 10 s of silence
    assert _encoded_frames(short._model, 25.0) == 1500  # never past Whisper's 30 s
    assert _encoded_frames(full._model, 3.0) == 1500


def test_bad_window_is_refused() -> None:
    with pytest.raises(ValueError, match="PARLEY_STT_WINDOW_S"):
        Settings(stt_window_s=45)


async def test_real_speech_keeps_its_words(short: WhisperSTT, full: WhisperSTT) -> None:
    """On recordings of people, the short window costs at most a word or two in all."""
    try:
        utterances = [u for u in real_speech.real_utterances() if not u.held_out][::2]
    except real_speech.MissingSpeech as exc:
        pytest.skip(str(exc))
    errors = {"short": 0, "full": 0}
    for utt in utterances:
        for name, stt in (("short", short), ("full", full)):
            text = await stt.transcribe(utt.pcm, final=True)
            assert text, f"{name} window heard nothing in {utt.name}"
            errors[name] += real_speech.word_errors(utt.text, text)[0]
    assert errors["short"] <= errors["full"] + 2, errors
