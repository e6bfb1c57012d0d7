"""A full WebRTC echo call whose DSP runs on the audio-processing service (PARLEY_DSP_URL):
the turn detector must still hear the user through the hop, and the echo must come back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from parley.config import Settings
from pipeline.dsp.remote import server as dsp_server
from tests.test_call import SENTENCE, CallClient, say_and_wait_reply, voiced_span


@pytest.fixture
async def dsp(tmp_path: Path) -> AsyncIterator[dsp_server.DspServer]:
    running = await dsp_server.start(Settings(data_dir=str(tmp_path / "dsp"), host="127.0.0.1"), port=0)
    try:
        yield running
    finally:
        await running.stop(grace_s=1.0)


@pytest.fixture
def settings(tmp_path: Path, database_url: str, dsp: dsp_server.DspServer) -> Settings:
    return Settings(data_dir=str(tmp_path / "data"), persona="echo", database_url=database_url,
                    dsp_url=f"127.0.0.1:{dsp.port}")


def sample(metrics: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(name + " "))


async def test_echo_call_through_the_remote_dsp(
    url: str, dsp: dsp_server.DspServer, speech: Callable[..., np.ndarray]
) -> None:
    pcm = speech(SENTENCE)
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as r:
        before = await r.text()
    async with CallClient(url, "echo") as client:
        t_end, t_reply = await say_and_wait_reply(client, pcm)
        assert dsp.service.sessions, "the call's DSP session is open on the service"
        await client.wait_event(lambda e: e["type"] == "tts-end", timeout=20)
        await asyncio.sleep(0.3)
        reply = client.audio_between(t_reply - 0.05, time.monotonic())
        states = [e["state"] for _, e in client.events if e["type"] == "turn"]
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as r:
        after = await r.text()

    assert states[:3] == ["listening", "speaking", "listening"]
    assert abs(voiced_span(reply) - voiced_span(pcm)) <= 0.1 * voiced_span(pcm)
    assert 0 < t_reply - t_end < 2.0
    assert dsp.service.frames_total > 100 * voiced_span(pcm)  # every inbound frame went through it
    sent = sample(after, "parley_dsp_remote_rtt_seconds_count") - sample(before, "parley_dsp_remote_rtt_seconds_count")
    late = sample(after, "parley_dsp_remote_late_frames_total") - sample(before, "parley_dsp_remote_late_frames_total")
    assert sent > 100 and late < 0.3 * sent, (sent, late)  # loose: this machine is shared
    assert sample(after, "parley_dsp_remote_fallbacks_total") == sample(before, "parley_dsp_remote_fallbacks_total")
    for _ in range(100):  # hanging up ends the stream, and the service frees the session
        if not dsp.service.sessions:
            break
        await asyncio.sleep(0.05)
    assert not dsp.service.sessions
