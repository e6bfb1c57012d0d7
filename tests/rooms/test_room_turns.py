"""A room speaker ends turns as a 1:1 call does: the Smart Turn model judges each pause.

A real person's finished sentence (asterisk prompts), then silence, goes frame by frame in
real time through a room participant's :class:`SpeakerPipeline`. With the end-of-turn model
(the real Smart Turn) the pause is judged and the turn ends after the "likely complete"
wait; with no model the same audio waits the "not judged" default -- the difference is the
model's verdict reaching this speaker's turn detector.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from parley.config import Settings
from pipeline.agent.room import SpeakerPipeline
from pipeline.audio import FRAME_10MS, RATE
from pipeline.dsp.turn import TurnEvent, TurnEventKind
from tests.conftest import real_utterance


class Heard:
    """What a room hears from one pipeline (the RoomHooks side), kept for the assertions."""

    def __init__(self) -> None:
        self.events: list[TurnEvent] = []

    def turn_event(self, pipeline: SpeakerPipeline, event: TurnEvent) -> None:
        self.events.append(event)

    def transcript(self, pipeline: SpeakerPipeline, text: str, final: bool) -> None:
        return None


@pytest.fixture(scope="module")
def sentence() -> np.ndarray:
    u = real_utterance("tt-weasels")
    return u.pcm[: int((u.end_s + 0.05) * RATE)]


async def silence_before_end_of_turn(settings: Settings, model: object, speech: np.ndarray) -> tuple[int, int]:
    """(ms of silence fed after the speech until END_OF_TURN, verdicts the detector got)."""
    heard = Heard()
    pipeline = SpeakerPipeline("p1", "Ann", settings, None, heard, model)  # type: ignore[arg-type]
    silence = np.zeros(int(3.0 * RATE), np.int16)
    audio = np.concatenate([speech, silence])
    t = 0.0
    try:
        for i in range(0, audio.size - FRAME_10MS + 1, FRAME_10MS):
            pipeline.on_frame(audio[i:i + FRAME_10MS], t)
            t += 0.01
            if i % (2 * FRAME_10MS) == 0:
                await asyncio.sleep(0.02)  # real time: the model answers as it would in a room
            if any(e.kind is TurnEventKind.END_OF_TURN for e in heard.events):
                return round((i + FRAME_10MS - speech.size) / RATE * 1000), pipeline.pause_judge.verdicts
    finally:
        await pipeline.close()
    raise AssertionError(f"no end of turn: {[e.kind.value for e in heard.events]}")


async def test_room_speaker_uses_the_end_of_turn_model(tmp_path: Path, smart_turn, sentence) -> None:
    settings = Settings(data_dir=str(tmp_path))
    assert settings.turn_likely_ms < settings.turn_default_ms
    with_model, verdicts = await silence_before_end_of_turn(settings, smart_turn, sentence)
    without_model, none = await silence_before_end_of_turn(settings, None, sentence)
    assert verdicts >= 1 and none == 0
    slack = 50  # the VAD's view of where speech stopped is a few frames off the recording's
    assert abs(without_model - settings.turn_default_ms) <= slack, without_model
    # the finished sentence was judged complete: the turn ended on the shorter wait
    assert abs(with_model - settings.turn_likely_ms) <= slack, (with_model, without_model)
