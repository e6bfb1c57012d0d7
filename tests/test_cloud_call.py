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

from media_server.client import CallClient
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


@pytest.fixture
async def fake() -> FakeOpenAI:
    server = FakeOpenAI(KEY, reply=REPLY, token_delay_s=0.01, default_transcript="What is courage?")
    await server.start()
    yield server
    await server.stop()


async def test_every_stage_comes_from_the_configured_server(
    fake: FakeOpenAI, tmp_path: Path, speech: Callable[..., np.ndarray], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = Settings(data_dir=str(tmp_path / "data"), persona="socrates", stt="openai", llm="openai",
                        tts="openai", openai_api_key=KEY, openai_base_url=fake.base_url)
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
