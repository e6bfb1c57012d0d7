"""The voice agent end to end over real WebRTC, on the embedded local models."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import Callable

import numpy as np
import pytest

from parley.call.client import CallClient
from parley.config import Settings
from pipeline.backends import registry
from pipeline.window import open_window
from tests.conftest import start_server
from tests.test_call import onset_offset, say_and_wait_reply

pytestmark = pytest.mark.models

QUESTION = "What is the meaning of a good life?"


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


async def test_spoken_question_gets_a_spoken_answer(url: str, speech: Callable[..., np.ndarray]) -> None:
    async with CallClient(url, "socrates") as client:
        since = time.monotonic()
        _, t_reply = await say_and_wait_reply(client, speech(QUESTION))
        done = await client.wait_event(lambda e: e["type"] == "llm-done", timeout=60, since=since)
        await client.wait_event(lambda e: e["type"] == "tts-end", timeout=60, since=since)
        await asyncio.sleep(0.3)
        reply_audio = client.audio_between(t_reply - 0.05, time.monotonic())
        events = [e for t, e in client.events if t >= since]
    final = next(e["text"] for e in events if e["type"] == "stt-final")
    assert {"meaning", "good", "life"} <= set(words(final))
    tokens = [e["token"] for e in events if e["type"] == "llm-token"]
    assert len(tokens) >= 3 and "".join(tokens).strip() == done["text"]
    kinds = [e["type"] for e in events]
    assert kinds.index("stt-final") < kinds.index("llm-token") < kinds.index("tts-start") < kinds.index("tts-end")
    metrics = next(e for e in events if e["type"] == "metrics")
    assert {"stt", "llm_first_token", "tts_first_audio", "first_frame"} <= set(metrics["latency_ms"])
    # what we heard is what the LLM wrote: transcribe the received reply back
    stt = registry.get("stt", "local", Settings())
    heard = words(await stt.transcribe(reply_audio))
    written = set(words(done["text"]))
    assert len(heard) >= 3
    assert sum(w in written for w in heard) >= 0.6 * len(heard), (heard, done["text"])


async def test_barge_in_keeps_only_what_was_heard(url: str, speech: Callable[..., np.ndarray]) -> None:
    async with CallClient(url, "storyteller") as client:
        since = time.monotonic()
        await say_and_wait_reply(client, speech("Tell me a long story about a dragon and a knight."))
        await asyncio.sleep(2.0)  # past the echo canceller's start-of-call guard (~1.2 s)
        interruption = speech("Wait, stop, I have a question.")
        playback = client.say(interruption)
        cut = await client.wait_event(lambda e: e["type"] == "interrupted", timeout=15, since=since)
        t_cut = next(t for t, e in client.events if e is cut)
        written = "".join(e["token"] for t, e in client.events if since <= t <= t_cut and e["type"] == "llm-token")
        await asyncio.sleep(0.5)
        t_onset = playback.started_at + onset_offset(interruption)
        voiced_after = client.voiced_between(t_onset + 0.3, t_onset + 1.2)
    heard = words(cut["heard_text"])
    assert heard, "some of the reply had been played before the interruption"
    assert heard == words(written)[: len(heard)], (cut["heard_text"], written)
    assert len(heard) < len(words(written)) or not written.endswith(".")
    assert not voiced_after, "the reply kept playing after the interruption"


async def test_typed_text_works_like_speech(url: str) -> None:
    async with CallClient(url, "holmes") as client:
        since = time.monotonic()
        client.send({"type": "text", "text": "Who are you?"})
        final = await client.wait_event(lambda e: e["type"] == "stt-final", timeout=10, since=since)
        done = await client.wait_event(lambda e: e["type"] == "llm-done", timeout=60, since=since)
        await client.wait_event(lambda e: e["type"] == "tts-end", timeout=60, since=since)
        client.send({"type": "settings", "emotion": 3})
        error = await client.wait_event(lambda e: e["type"] == "error", timeout=10, since=since)
    assert final["text"] == "Who are you?"
    assert done["text"]
    assert error["code"] == "bad_setting"


#: typed turns that each replace a reply already being spoken (storyteller talks at length)
REPLACING_TURNS = (
    "Tell me a long story about a dragon.",
    "No, tell me a story about a lighthouse keeper instead.",
    "Actually, tell me about a sailor and the sea.",
)


async def test_replaced_replies_reach_the_redis_window_in_order(
    settings: Settings, redis_url: str
) -> None:
    """A replaced reply's heard text lands in history before the next user message.

    The new reply must start only once the cancelled one has finished writing what was
    heard; otherwise, with the Redis window, the next turn's user message can overtake it.
    """
    settings = dataclasses.replace(settings, redis_url=redis_url)
    runner, url = await start_server(settings)
    window = open_window(Settings(redis_url=redis_url))
    session = ""
    try:
        async with CallClient(url, "storyteller") as client:
            session = client.session["session_id"]
            start = time.monotonic()
            for text in REPLACING_TURNS[:-1]:
                since = time.monotonic()
                client.send({"type": "text", "text": text})
                await client.wait_event(lambda e: e["type"] == "tts-start", timeout=60, since=since)
                await asyncio.sleep(1.0)  # a few words of it are heard
            since = time.monotonic()
            client.send({"type": "text", "text": REPLACING_TURNS[-1]})
            done = await client.wait_event(lambda e: e["type"] == "llm-done", timeout=90, since=since)
            heard = [e["heard_text"] for t, e in client.events if t >= start and e["type"] == "interrupted"]
        history = await window.load(session)
    finally:
        await runner.cleanup()
        if session:
            await window.delete(session)
        await window.close()
    expected = []
    for text, heard_text in zip(REPLACING_TURNS, [*heard, done["text"]], strict=True):
        expected.append(("user", text))
        if heard_text:
            expected.append(("assistant", heard_text))
    assert len(heard) == len(REPLACING_TURNS) - 1
    got = [(m.role, m.content) for m in history]
    assert got == expected, "\n".join(map(repr, got))
