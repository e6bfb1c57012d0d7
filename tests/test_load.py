"""Admission from measured load, refusals a client can act on, and the drain on shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from bench.serverproc import free_port, wait_healthy
from media_server.load import LoadMonitor, Overloaded
from parley.call.client import CallClient
from parley.config import Settings
from signaling.keys import CALLS
from signaling.worker import drain
from tests.conftest import start_server, write_wav


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


async def test_cpu_load_closes_the_door_and_draining_keeps_it_shut() -> None:
    calls = [3]
    # a low limit: the machine these tests share may give the burning thread a fraction of a core
    monitor = LoadMonitor(lambda: calls[0], limit=0.05, max_calls=100)
    monitor.sample()
    for _ in range(4):  # a core's worth of CPU for a few samples
        await asyncio.to_thread(_burn, 0.3)
        raw = monitor.sample()
        assert raw.cpu > 0.05, raw
    with pytest.raises(Overloaded, match="capacity") as refused:
        monitor.admit()
    assert refused.value.retry_after_s > 0
    calls[0] = 0
    monitor.admit()  # an empty worker always takes one call, however busy its machine
    monitor.draining = True
    with pytest.raises(Overloaded, match="shutting down"):
        monitor.admit()


@pytest.fixture
async def tight(settings: Settings) -> AsyncIterator[tuple[web.AppRunner, str]]:
    """A server whose load limit any measured load exceeds: the second call is refused."""
    runner, url = await start_server(dataclasses.replace(settings, load_limit=0.0))
    try:
        yield runner, url
    finally:
        await runner.cleanup()


async def test_a_full_worker_answers_503_with_retry_after(tight: tuple[web.AppRunner, str], tmp_path: Path) -> None:
    _, url = tight
    async with CallClient(url, "echo"):
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/whip?persona=echo", data="v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n",
                                 headers={"Content-Type": "application/sdp"}) as r:
                body = await r.json()
                assert r.status == 503 and body["error"]["code"] == "busy", body
                assert int(r.headers["Retry-After"]) > 0
                assert "capacity" in body["error"]["message"]
        wav = write_wav(tmp_path / "s.wav", np.zeros(4800, np.int16))
        run = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "parley", "call", "--url", url, "--wav", str(wav), "--persona", "echo",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, stderr = await asyncio.wait_for(run.communicate(), 60)
        assert run.returncode == 2 and b"503 busy" in stderr and b"capacity" in stderr, stderr


async def test_drain_refuses_new_calls_then_ends_the_rest_with_an_event(
        server: tuple[web.AppRunner, str]) -> None:
    runner, url = server
    app = runner.app
    async with CallClient(url, "echo") as client:
        draining = asyncio.ensure_future(drain(app, 1.0))
        await asyncio.sleep(0.1)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/ready") as r:
                assert r.status == 503 and (await r.json())["status"] == "draining"
            async with http.post(f"{url}/api/offer", json={"sdp": "v=0\r\nm=audio", "type": "offer"}) as r:
                assert r.status == 503 and "Retry-After" in r.headers
        assert app[CALLS].calls  # the call goes on during the drain
        ended = await client.wait_event(lambda e: e["type"] == "error", timeout=5)
        assert ended["code"] == "server_draining"
        await asyncio.wait_for(draining, 10)
        assert not app[CALLS].calls


async def test_sigterm_drains_a_served_worker(tmp_path: Path, database_url: str,
                                              speech: Callable[..., np.ndarray]) -> None:
    port = free_port()
    env = {**os.environ, "PARLEY_DATA_DIR": str(tmp_path / "data"), "PARLEY_PERSONA": "echo",
           "PARLEY_DATABASE_URL": database_url, "PARLEY_DRAIN_S": "1.5"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "parley", "serve", "--port", str(port),
                                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        await asyncio.to_thread(wait_healthy, url, 120)
        async with CallClient(url, "echo") as client:
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            ended = await client.wait_event(lambda e: e["type"] == "error", timeout=10)
            assert ended["code"] == "server_draining"
            assert 1.0 < time.monotonic() - t0 < 6.0  # the call was let go on for the drain limit
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
