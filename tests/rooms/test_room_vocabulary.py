"""Room transcription is biased toward the agent's name (``Vocabulary`` on the STT interface).

The agent answers when it is named, and Whisper (tiny.en) writes unfamiliar names as
familiar words: "Hypatia" comes out as "Hi, patient", "Diotima" as nothing at all. Spoken
questions that name such a persona (espeak-ng) go through the real local Whisper, and
through a room speaker's whole pipeline, with the room's vocabulary; the name must be in
the transcript (as the floor policy reads it). Talk that does not name the agent must not
gain the name from the bias (that would be a false activation).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from media_server.rooms import Room
from parley.config import Settings
from pipeline.agent.floor import mentions
from pipeline.agent.room import SpeakerPipeline
from pipeline.audio import FRAME_10MS, RATE
from pipeline.backends import registry
from pipeline.backends.base import STT, Vocabulary
from pipeline.dsp.turn import TurnEvent
from tests.conftest import espeak

pytestmark = pytest.mark.models

NAMES = ("Hypatia", "Diotima", "Anaximander")


@pytest.fixture(scope="module")
def stt() -> STT:
    return registry.get("stt", "local", Settings(stt="local"))


@pytest.mark.parametrize("name", NAMES)
async def test_the_persona_name_is_heard_with_the_vocabulary(stt: STT, name: str) -> None:
    question = espeak(f"{name}, what do you think about that?")
    plain = await stt.transcribe(question)
    biased = await stt.transcribe(question, vocabulary=Vocabulary((name,)))
    print(f"{name}: without {plain!r}, with {biased!r}")
    assert mentions(biased, [name]), (plain, biased)
    unaddressed = await stt.transcribe(espeak("Bob, what do you think about that? I went to the market."),
                                       vocabulary=Vocabulary((name,)))
    assert unaddressed and not mentions(unaddressed, [name]), unaddressed
    assert await stt.transcribe(np.zeros(RATE, np.int16), vocabulary=Vocabulary((name,))) == ""


class Transcripts:
    """The room side of one pipeline: its final and interim transcripts."""

    def __init__(self) -> None:
        self.finals: list[str] = []
        self.interims: list[str] = []

    def turn_event(self, pipeline: SpeakerPipeline, event: TurnEvent) -> None:
        return None

    def transcript(self, pipeline: SpeakerPipeline, text: str, final: bool) -> None:
        (self.finals if final else self.interims).append(text)


async def test_a_room_speaker_is_transcribed_with_the_agents_name(stt: STT, tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path), turn_model="silence")
    room = Room("hypatia", "Hypatia (philosopher)", "mention_only", "", settings, stt)
    assert room.vocabulary == Vocabulary(("Hypatia",))  # the name as people say it
    heard = Transcripts()
    pipeline = SpeakerPipeline("p1", "Ann", settings, stt, heard, None, room.vocabulary)
    audio = np.concatenate([np.zeros(RATE // 2, np.int16), espeak("Hypatia, what do you think about that?"),
                            np.zeros(2 * RATE, np.int16)])
    try:
        for i in range(0, audio.size - FRAME_10MS + 1, FRAME_10MS):
            pipeline.on_frame(audio[i:i + FRAME_10MS], i / RATE)
            if i % (10 * FRAME_10MS) == 0:
                await asyncio.sleep(0)
        for _ in range(300):  # bounded: the final decode takes well under a second here
            if heard.finals:
                break
            await asyncio.sleep(0.05)
    finally:
        await pipeline.close()
        await room.close()
    assert len(heard.finals) == 1 and mentions(heard.finals[0], ["Hypatia"]), heard.finals
