"""The speculative reply (``PARLEY_SPECULATIVE_REPLY``) in real calls: aiortc peers over
loopback, every model stage on the OpenAI-compatible stand-in (tests/fake_openai.py, real
sockets), whose request log says when the LLM was asked. The turn ends on silence and the
transcript (``PARLEY_TURN_MODEL=silence``), so the pause lengths below are the test's own."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from media_server.agent_track import AgentTrack
from parley.call.client import CallClient
from parley.config import Settings
from personas import load_personas
from pipeline.agent import AgentContext, VoiceAgent
from pipeline.agent.fallback import TurnBudget
from pipeline.audio import RATE
from pipeline.services import Services
from tests.conftest import start_server
from tests.fake_openai import FakeOpenAI
from tests.test_cloud_call import KEY, cloud_settings

REPLY = "Courage is knowing what not to fear. What do you fear most, my friend, and why?"
#: what the reply shows to the user; a speculation must show none of it before the end of turn
REPLY_EVENTS = {"stt-final", "llm-token", "llm-done", "tts-start", "tts-end", "metrics"}


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    # a mid-phrase transcript makes the turn wait PARLEY_TURN_INCOMPLETE_MS: pauses in the
    # user's speech do not end it, while the speculation starts in each
    server = FakeOpenAI(reply=REPLY, token_delay_s=0.08, default_transcript="What is courage, and")
    await server.start()
    yield server
    await server.stop()


FRAME = RATE // 100  # the agent takes 10 ms frames


async def feed(agent: VoiceAgent, pcm: np.ndarray, t: float, until: Callable[[], bool] = lambda: False) -> float:
    """Feed ``pcm`` to the agent frame by frame in about real time, stopping early once
    ``until()``; returns the media time reached."""
    for i in range(pcm.size // FRAME):
        agent.on_frame(pcm[i * FRAME : (i + 1) * FRAME], t)
        t += 0.01
        if i % 5 == 4:
            await asyncio.sleep(0.05)
            if until():
                break
    return t


async def test_a_cancelled_speculation_leaves_no_event_audio_or_history(
    fake: FakeOpenAI, tmp_path: Path, speech: Callable[..., np.ndarray]
) -> None:
    """A voice agent on the real DSP chain, window and outbound track, its stages on the
    stand-in: the user pauses, the reply is written and synthesized behind the gate, the
    user goes on -- and nothing of that reply was emitted, queued or written."""
    settings = Settings(data_dir=str(tmp_path / "data"), persona="socrates", stt="openai", llm="openai",
                        tts="openai", openai_api_key=KEY, openai_base_url=fake.base_url,
                        turn_model="silence", speculative_reply="1", filler_after_s=0)
    services = await Services.open(settings)
    track = AgentTrack()
    events: list[dict[str, Any]] = []
    agent = VoiceAgent(load_personas()["socrates"], track, events.append,
                       AgentContext(settings, session_id="spec-session", services=services))
    try:
        t = await feed(agent, speech("What is courage,"), 0.0)
        # silence until the speculative reply has sent text to TTS (its audio is held)
        t = await feed(agent, np.zeros(int(1.5 * RATE), np.int16), t, until=lambda: bool(fake.requests("speech")))
        assert fake.requests("chat") and fake.requests("speech"), "no reply was started in the pause"
        await feed(agent, speech("and what is fear?")[: RATE // 2], t)
        await asyncio.wait_for(fake.requests("chat")[0].disconnected.wait(), 5)
        await asyncio.sleep(0.3)
        assert not [e for e in events if e["type"] in REPLY_EVENTS or e["type"] == "turn"], events
        assert not track.speaking and track.queued_s == 0
        assert await agent.window.load("spec-session") == []
    finally:
        await agent.close()
        await services.close()


@dataclass
class Turn:
    events: list[tuple[float, dict[str, Any]]]  # (received at, event) since the user began
    t_end_of_turn: float  # when the client got ``end-of-turn``
    t_first_audio: float  # the first voiced frame of the reply


async def call(fake: FakeOpenAI, tmp_path: Path, database_url: str, pcm: np.ndarray,
               speculative: str) -> Turn:
    """Say ``pcm`` in a new call; wait for the whole spoken reply."""
    settings = cloud_settings(tmp_path, database_url, fake.base_url, turn_model="silence",
                              speculative_reply=speculative)
    runner, url = await start_server(settings)
    try:
        async with CallClient(url, "socrates") as client:
            since = time.monotonic()
            await client.say(pcm).done
            await client.wait_event(lambda e: e["type"] == "tts-end", timeout=30, since=since)
            t_eot = next(t for t, e in client.events if t >= since and e["type"] == "end-of-turn")
            voiced = client.voiced_between(since)
            assert voiced, "the reply was not heard"
            return Turn([(t, e) for t, e in client.events if t >= since], t_eot, voiced[0].t)
    finally:
        await runner.cleanup()


def user_messages(request_body: dict[str, Any]) -> list[str]:
    return [m["content"] for m in request_body["messages"] if m["role"] == "user"]


async def test_a_speculation_the_user_talks_over_leaves_no_trace(
    fake: FakeOpenAI, tmp_path: Path, database_url: str, speech: Callable[..., np.ndarray]
) -> None:
    """The user pauses long enough for the reply to start behind the gate, then goes on:
    that reply is cancelled -- no event, no audio, nothing in the conversation window."""
    pause = np.zeros(int(0.7 * RATE), np.int16)
    pcm = np.concatenate([speech("What is courage,"), pause, speech("and what is fear?")])
    turn = await call(fake, tmp_path, database_url, pcm, speculative="1")
    chats = fake.requests("chat")
    assert len(chats) >= 2, "no reply was started in the pause"
    first = chats[0]
    await asyncio.wait_for(first.disconnected.wait(), 5)  # the discarded stream was closed
    assert first.at < turn.t_end_of_turn and not first.finished
    kinds = [e["type"] for _, e in turn.events]
    assert kinds.count("end-of-turn") == 1 and kinds.count("stt-final") == 1, kinds
    assert kinds.count("llm-done") == 1, kinds
    early = [e for t, e in turn.events if t < turn.t_end_of_turn]
    assert not [e for e in early if e["type"] in REPLY_EVENTS], early
    assert not [e for e in early if e == {"type": "turn", "state": "thinking"}], early
    assert turn.t_first_audio > turn.t_end_of_turn
    # the answered reply's prompt holds the user's words once: the cancelled one wrote nothing
    assert len(user_messages(chats[-1].body)) == 1, chats[-1].body["messages"]


async def test_the_reply_is_asked_for_in_the_pause_and_heard_sooner(
    fake: FakeOpenAI, tmp_path: Path, database_url: str, speech: Callable[..., np.ndarray]
) -> None:
    """With speculation the LLM is asked before ``end-of-turn``; without, after. What the
    user sees and hears still starts after it, and its first audio comes sooner."""
    pcm = np.concatenate([speech("What is courage?"), np.zeros(RATE // 2, np.int16)])
    ahead = await call(fake, tmp_path, database_url, pcm, speculative="1")
    ahead_chat = fake.requests("chat")[-1]
    ahead_tts = next(r for r in fake.requests("speech") if r.at >= ahead_chat.at)  # not a filler's
    fake.records.clear()
    plain = await call(fake, tmp_path, database_url, pcm, speculative="0")
    plain_chat = fake.requests("chat")[-1]

    assert len(fake.requests("chat")) == 1
    assert ahead_chat.at < ahead.t_end_of_turn < ahead.t_first_audio
    assert plain.t_end_of_turn < plain_chat.at < plain.t_first_audio
    for turn in (ahead, plain):
        early = [e for t, e in turn.events if t < turn.t_end_of_turn and e["type"] in REPLY_EVENTS]
        assert not early, early
        kinds = [e["type"] for _, e in turn.events]
        order = [k for k in kinds if k in ("end-of-turn", "stt-final", "llm-token", "tts-start", "llm-done")]
        assert order[0] == "end-of-turn" and order[1] == "stt-final" and order[-1] == "llm-done", order
        assert "".join(e["token"] for _, e in turn.events if e["type"] == "llm-token").strip() == REPLY
    # sooner: its first sentence was being synthesized before the turn ended (the plain
    # reply's cannot be: its LLM is asked after the end, above)
    assert ahead_tts.at < ahead.t_end_of_turn


async def test_an_llm_asked_before_the_end_of_turn_is_still_held_to_the_hang_timeout() -> None:
    """A speculative reply asks the LLM before its turn's budget runs: once adopted, an LLM
    that has not answered gets ``hang_s`` like a local model, not forever."""
    budget = TurnBudget(budget_s=1.0, hang_s=0.2)
    assert budget.asking_llm(remote=False) is None  # asked in the pause
    failure = await budget.run(asyncio.sleep(30), time.monotonic(), lambda: "llm")
    assert failure is not None and (failure.stage, failure.reason) == ("llm", "timeout")
