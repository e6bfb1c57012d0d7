"""A turn of two sentences keeps its second one: in one pass without timestamps, Whisper
may end its output at the first sentence end with words still to come -- the live
call lost "2 to lock or unlock the conference" about one time in four
(``tests/test_turns_call.py``). The same real recording, through the real DSP chain at a
few sample offsets (as a call's frames fall), must come back whole, final and interim."""

from __future__ import annotations

import numpy as np
import pytest

from parley.config import Settings
from pipeline.audio import FRAME_10MS
from pipeline.backends import registry
from pipeline.backends.local_stt import WhisperSTT
from pipeline.dsp.chain import DspChain

real_speech = pytest.importorskip("bench.real_speech")
pytestmark = pytest.mark.models


def through_the_chain(pcm: np.ndarray) -> np.ndarray:
    chain = DspChain(Settings(aec="numpy"))
    frames = range(0, pcm.size - FRAME_10MS + 1, FRAME_10MS)
    return np.concatenate([chain.process(pcm[i:i + FRAME_10MS], i / 48000)[0] for i in frames])


async def test_the_second_sentence_is_not_dropped() -> None:
    try:
        utterance = real_speech.comma_pause(600)
    except real_speech.MissingSpeech as exc:
        pytest.skip(str(exc))
    stt = registry.get("stt", "local", Settings(stt="local"))
    assert isinstance(stt, WhisperSTT)
    heard = []
    for shift_ms in (0, 3, 7, 11, 13, 17):
        audio = through_the_chain(utterance.pcm[shift_ms * 48:])
        for final in (True, False):
            heard.append(await stt.transcribe(audio, final=final))
    whole = [t for t in heard if {"yourself", "lock", "conference"} <= set(real_speech.normalize_words(t))]
    assert len(whole) == len(heard), heard
