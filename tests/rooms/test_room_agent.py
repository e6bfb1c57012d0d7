"""The persona as a room participant, on the real local models (Whisper, SmolLM2, Piper).

Two aiortc participants: a question that names the agent is answered (and everyone hears
the answer); a conversation between the two that never names it is left alone; every
transcript carries its speaker, and the room transcript is stored in Postgres.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from contextlib import AsyncExitStack

import aiohttp
import numpy as np
import pytest

from parley.call.room import RoomClient, create_room

pytestmark = pytest.mark.models

UNADDRESSED = [
    ("Ann", "I think we should get some lunch soon."),
    ("Bob", "Yes, the pizza place on the corner is good."),
    ("Ann", "Great, let us go there at noon then."),
]


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


async def say_turn(client: RoomClient, pcm: np.ndarray, listener: RoomClient) -> dict:
    """``client`` speaks; returns the attributed final transcript everyone receives."""
    since = time.monotonic()
    await client.say(pcm).done
    return await listener.wait_event(lambda e: e["type"] == "stt-final"
                                     and e["participant_id"] == client.participant_id, 60, since)


async def test_agent_answers_when_named_and_stays_out_otherwise(
        url: str, speech: Callable[..., np.ndarray]) -> None:
    room = await create_room(url, "socrates")
    async with AsyncExitStack() as stack:
        ann, bob = [await stack.enter_async_context(
            RoomClient(url, token=room["token"], room_id=room["room_id"], name=name)) for name in ("Ann", "Bob")]
        since = time.monotonic()
        final = await say_turn(ann, speech("Socrates, what is the meaning of a good life?"), bob)
        assert final["speaker"] == "Ann" and {"good", "life"} <= words(final["text"])
        start = await bob.wait_event(lambda e: e["type"] == "tts-start", 90, since)
        assert start["participant_id"] == "agent" and start["speaker"] == "Socrates"
        done = await ann.wait_event(lambda e: e["type"] == "llm-done", 120, since)
        await ann.wait_event(lambda e: e["type"] == "tts-end", 120, since)
        t_start = next(t for t, e in bob.events if e is start)
        for client in (ann, bob):  # both hear the agent
            assert len(client.voiced_between(t_start)) >= 50
        quiet_since = time.monotonic()
        for name, text in UNADDRESSED:
            speaker, listener = (ann, bob) if name == "Ann" else (bob, ann)
            final = await say_turn(speaker, speech(text), listener)
            assert final["speaker"] == name
        await asyncio.sleep(3.0)
        agent_events = [e["type"] for t, e in ann.events if t >= quiet_since and e.get("participant_id") == "agent"]
        headers = {"Authorization": f"Bearer {room['token']}"}
        async with aiohttp.ClientSession() as http, \
                http.get(f"{url}/api/rooms/{room['room_id']}/transcript", headers=headers) as r:
            lines = (await r.json())["lines"]
    assert not {"llm-token", "tts-start"} & set(agent_events), agent_events
    speakers = [line["speaker"] for line in lines]
    assert speakers[:2] == ["Ann", "Socrates"] and speakers[2:] == ["Ann", "Bob", "Ann"], speakers
    assert lines[1]["text"] == done["text"]


async def test_follow_up_answers_the_next_turn_without_its_name(
        url: str, speech: Callable[..., np.ndarray]) -> None:
    room = await create_room(url, "socrates", policy="follow_up")
    async with RoomClient(url, token=room["token"], room_id=room["room_id"], name="Ann") as ann:
        since = time.monotonic()
        await say_turn(ann, speech("Socrates, what is courage?"), ann)
        await ann.wait_event(lambda e: e["type"] == "tts-end" and e.get("participant_id") == "agent", 120, since)
        follow = time.monotonic()  # within PARLEY_ROOM_FOLLOW_UP_S (8 s) of its answer
        await say_turn(ann, speech("And what about fear?"), ann)
        start = await ann.wait_event(lambda e: e["type"] == "tts-start", 90, follow)
    assert start["participant_id"] == "agent"


async def test_anyone_can_barge_in_on_the_agent(url: str, speech: Callable[..., np.ndarray]) -> None:
    room = await create_room(url, "storyteller")
    async with AsyncExitStack() as stack:
        ann, bob = [await stack.enter_async_context(
            RoomClient(url, token=room["token"], room_id=room["room_id"], name=name)) for name in ("Ann", "Bob")]
        since = time.monotonic()
        await say_turn(ann, speech("Storyteller, tell us a long story about a dragon and a knight."), bob)
        await bob.wait_event(lambda e: e["type"] == "tts-start", 90, since)
        await asyncio.sleep(2.0)
        interruption = time.monotonic()
        await bob.say(speech("Wait, stop, I have a question.")).done  # Bob, not the one it answered
        cut = await ann.wait_event(lambda e: e["type"] == "interrupted", 15, interruption)
        await asyncio.sleep(1.0)
        t_cut = next(t for t, e in ann.events if e is cut)
        voiced_after = bob.voiced_between(t_cut + 0.5, time.monotonic())  # Bob hears only the agent now
    assert cut["participant_id"] == "agent"
    assert len(voiced_after) <= 10, "the agent kept talking after the barge-in"
