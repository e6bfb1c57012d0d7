"""Interim transcripts (``stt-interim``) get at most ``INTERIM_DUTY`` of the Whisper thread:
when the user stops, the end-of-turn decode waits behind the interim still running, so
interims every 0.4 s on a 0.5 s decode put ~160 ms of STT after every end of turn
(docs/architecture.md, latency budget). A voice agent, and a room speaker's pipeline (whose
end-of-turn decode queues behind every speaker's interims), on the real DSP chain and the
local Whisper; their STT calls are timed on their way through."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from media_server.agent_track import AgentTrack
from parley.config import Settings
from personas import load_personas
from pipeline.agent import AgentContext, VoiceAgent
from pipeline.agent.room import SpeakerPipeline
from pipeline.agent.voice import INTERIM_DUTY
from pipeline.audio import RATE
from pipeline.backends import registry
from pipeline.services import Services
from tests.fake_openai import FakeOpenAI
from tests.rooms.test_room_vocabulary import Transcripts
from tests.test_cloud_call import KEY
from tests.test_speculative_reply import feed

pytestmark = pytest.mark.models
SENTENCE = ("What is courage, and is it the same thing in a soldier as in a doctor, "
            "or in a mother who keeps her children safe from every harm?")


class TimedSTT:
    """The agent's own STT, with the time each interim decode took recorded."""

    def __init__(self, stt: Any) -> None:
        self.stt = stt
        self.interims: list[float] = []

    async def transcribe(self, pcm: np.ndarray, *, final: bool = True, vocabulary: Any = None) -> str:
        started = time.monotonic()
        text: str = await self.stt.transcribe(pcm, final=final, vocabulary=vocabulary)
        if not final:
            self.interims.append(time.monotonic() - started)
        return text


@pytest.fixture
async def llm() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI()
    await server.start()
    yield server
    await server.stop()


async def test_interims_leave_whisper_mostly_free(llm: FakeOpenAI, tmp_path: Path,
                                                  speech: Callable[..., np.ndarray]) -> None:
    settings = Settings(data_dir=str(tmp_path / "data"), persona="socrates", stt="local", llm="openai",
                        tts="openai", openai_api_key=KEY, openai_base_url=llm.base_url,
                        turn_model="silence", speculative_reply="0")
    services = await Services.open(settings)
    events: list[dict[str, Any]] = []
    agent = VoiceAgent(load_personas()["socrates"], AgentTrack(), events.append,
                       AgentContext(settings, session_id="interim-duty", services=services))
    timed = agent.stt = TimedSTT(agent.stt)
    try:
        talk = speech(SENTENCE)
        await feed(agent, talk, 0.0)
        talked_s = talk.size / RATE
        assert len(timed.interims) >= 2, timed.interims  # the client still sees the words grow
        # the first one starts unconstrained; after it, a quarter of the time at most
        assert sum(timed.interims) <= INTERIM_DUTY * talked_s + max(timed.interims), (timed.interims, talked_s)
        assert any(e["type"] == "stt-interim" for e in events)
    finally:
        await agent.close()
        await services.close()


async def test_a_room_speakers_interims_leave_whisper_mostly_free(tmp_path: Path,
                                                                   speech: Callable[..., np.ndarray]) -> None:
    settings = Settings(data_dir=str(tmp_path), stt="local", turn_model="silence")
    timed = TimedSTT(registry.get("stt", "local", settings))
    heard = Transcripts()
    pipeline = SpeakerPipeline("p1", "Ann", settings, timed, heard)  # type: ignore[arg-type]
    try:
        talk = speech(SENTENCE)
        await feed(pipeline, talk, 0.0)  # type: ignore[arg-type]
        talked_s = talk.size / RATE
        assert len(timed.interims) >= 2 and heard.interims, timed.interims
        assert sum(timed.interims) <= INTERIM_DUTY * talked_s + max(timed.interims), (timed.interims, talked_s)
    finally:
        await pipeline.close()
