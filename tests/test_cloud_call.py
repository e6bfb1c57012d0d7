"""A whole call whose every stage runs on an OpenAI-compatible server (a local fake over
real sockets, streaming like the real API), selected by configuration only."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from parley.call.client import CallClient
from parley.config import Settings
from pipeline.audio import RATE
from tests.conftest import start_server
from tests.fake_openai import FakeOpenAI, pitch_for
from tests.test_call import say_and_wait_reply

KEY = "sk-" + "k" * 32  # a realistic-looking key, so a leak would be visible
REPLY = "Courage is knowing what not to fear. What do you fear?"


def dominant_pitch(pcm: np.ndarray) -> float:
    x = pcm.astype(np.float64) * np.hanning(pcm.size)
    return float(np.argmax(np.abs(np.fft.rfft(x))) * RATE / pcm.size)


def cloud_settings(tmp_path: Path, database_url: str, base_url: str, **fields: object) -> Settings:
    """Every stage on the OpenAI-compatible server at ``base_url``, chosen by config only."""
    return Settings(data_dir=str(tmp_path / "data"), database_url=database_url, persona="socrates",
                    stt="openai", llm="openai", tts="openai", openai_api_key=KEY, openai_base_url=base_url,
                    **fields)


@pytest.fixture
async def fake() -> FakeOpenAI:
    server = FakeOpenAI(KEY, reply=REPLY, token_delay_s=0.01, default_transcript="What is courage?")
    await server.start()
    yield server
    await server.stop()


async def test_every_stage_comes_from_the_configured_server(
    fake: FakeOpenAI, tmp_path: Path, database_url: str, speech: Callable[..., np.ndarray],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = cloud_settings(tmp_path, database_url, fake.base_url)
    runner, url = await start_server(settings)
    try:
        async with CallClient(url, "socrates") as client:
            since = time.monotonic()
            _, t_reply = await say_and_wait_reply(client, speech("What is courage?"))
            done = await client.wait_event(lambda e: e["type"] == "llm-done", timeout=30, since=since)
            await client.wait_event(lambda e: e["type"] == "tts-end", timeout=30, since=since)
            await asyncio.sleep(0.3)
            voiced = client.voiced_between(t_reply)
            events = [e for t, e in client.events if t >= since]
    finally:
        await runner.cleanup()
    assert next(e["text"] for e in events if e["type"] == "stt-final") == "What is courage?"
    assert done["text"] == REPLY
    assert "".join(e["token"] for e in events if e["type"] == "llm-token").strip() == REPLY
    # the voice is the server's: its fake speech is a tone at a pitch derived from the text
    spoken = {e["input"] for e in (r.body for r in fake.requests("speech"))}
    pitch = dominant_pitch(np.concatenate([r.pcm for r in voiced]))
    assert any(abs(pitch - pitch_for(text)) < 10 for text in spoken), (pitch, spoken)
    for route in ("transcriptions", "chat", "speech"):
        assert fake.requests(route), f"nothing was asked of {route}"
        assert all(r.authorized for r in fake.requests(route))
    assert KEY not in json.dumps(events) and KEY not in caplog.text


async def ask(url: str, persona: str, text: str, since: float | None = None) -> tuple[CallClient, dict]:
    """Open a call, type ``text``, wait for the whole spoken reply; returns (client, llm-done)."""
    client = CallClient(url, persona)
    await client.connect()
    since = time.monotonic()
    client.send({"type": "text", "text": text})
    done = await client.wait_event(lambda e: e["type"] == "llm-done", timeout=30, since=since)
    await client.wait_event(lambda e: e["type"] == "tts-end", timeout=30, since=since)
    return client, done


async def test_flagged_reply_sentence_is_replaced_before_it_is_spoken(
    fake: FakeOpenAI, tmp_path: Path, database_url: str
) -> None:
    from pipeline.moderation import safe_reply

    fake.reply = "Here is a thought. Now some gruesome details follow."
    fake.flag_words = {"gruesome": "violence"}
    settings = cloud_settings(tmp_path, database_url, fake.base_url, moderation="openai")
    runner, url = await start_server(settings)
    try:
        client, done = await ask(url, "socrates", "Tell me something.")
        await client.close()
    finally:
        await runner.cleanup()
    spoken = [r.body["input"] for r in fake.requests("speech")]
    assert done["text"] == "Here is a thought. " + safe_reply("Socrates")
    assert not any("gruesome" in text for text in spoken)
    assert safe_reply("Socrates") in spoken


async def test_spent_budget_is_said_instead_of_calling_the_model(
    fake: FakeOpenAI, tmp_path: Path, database_url: str
) -> None:
    from pipeline.usage import budget_notice

    settings = cloud_settings(tmp_path, database_url, fake.base_url, user_daily_token_budget=5)
    runner, url = await start_server(settings)
    try:
        client, first = await ask(url, "socrates", "Hello?")
        since = time.monotonic()
        client.send({"type": "text", "text": "And again?"})
        second = await client.wait_event(lambda e: e["type"] == "llm-done", timeout=30, since=since)
        await client.close()
    finally:
        await runner.cleanup()
    assert first["text"] == REPLY
    assert second["text"] == budget_notice()
    assert len(fake.requests("chat")) == 1


async def test_unreachable_backend_falls_back_to_local_within_two_seconds(tmp_path: Path, database_url: str) -> None:
    from tests.fake_openai import dead_url

    settings = cloud_settings(tmp_path, database_url, dead_url())
    runner, url = await start_server(settings)
    try:
        client = CallClient(url, "socrates")
        await client.connect()
        since = time.monotonic()
        client.send({"type": "text", "text": "What is virtue?"})
        done = await client.wait_event(lambda e: e["type"] == "llm-done", timeout=60, since=since)
        await client.close()
    finally:
        await runner.cleanup()
    assert done["text"], "the local fallback answered"
    voiced = client.voiced_between(since)
    assert voiced, "nothing was heard"
    dead_air = voiced[0].t - since
    print(f"backend down: first audio {dead_air * 1000:.0f} ms after the question")
    assert dead_air <= 2.0
