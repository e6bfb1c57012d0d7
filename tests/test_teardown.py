"""50 sequential calls must leave no tasks, threads or file descriptors behind; shutdown
closes every call, even one whose agent is stuck or broken."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from media_server.agent_track import AgentTrack
from media_server.call import AgentFactory, Call, CallSession
from media_server.manager import CallManager
from parley.call.client import CallClient
from parley.config import Settings
from personas import load_personas
from pipeline.agent import AgentContext, EchoAgent, Emit
from signaling.keys import CALLS, STORE
from tests.conftest import start_server


async def one_call(url: str) -> None:
    async with CallClient(url, "echo") as client:
        client.send({"type": "ping", "t": 0})
        await client.wait_event(lambda e: e["type"] == "pong", timeout=10)


async def wait_no_calls(runner: web.AppRunner) -> None:
    calls = runner.app[CALLS].calls
    for _ in range(300):
        if not calls:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{len(calls)} calls still open after the clients hung up")


def resources() -> tuple[int, int, int]:
    """(tasks, threads, fds). The loop's default executor grows lazily up to a fixed bound
    (DNS lookups run there), so its ``asyncio_N`` workers are pool growth, not per-call leaks."""
    threads = [t for t in threading.enumerate() if not t.name.startswith("asyncio_")]
    return len(asyncio.all_tasks()), len(threads), len(os.listdir("/proc/self/fd"))


async def settle(expected: tuple[int, int, int]) -> tuple[int, int, int]:
    """Threads and sockets close asynchronously; give them a bounded moment."""
    for _ in range(100):
        now = resources()
        if all(n <= e for n, e in zip(now, expected, strict=True)):
            return now
        await asyncio.sleep(0.05)
    return resources()


async def test_fifty_calls_leak_nothing(server: tuple[web.AppRunner, str]) -> None:
    runner, url = server
    pool = runner.app[STORE].pool
    await one_call(url)  # warm-up: executors and caches created once per process
    await wait_no_calls(runner)
    before, pool_before = await settle(resources()), pool.get_size()
    for _ in range(50):
        await one_call(url)
    await wait_no_calls(runner)
    # the Postgres pool may open connections up to its bound: that is not a per-call leak
    grown = pool.get_size() - pool_before
    after = await settle((before[0], before[1], before[2] + grown))
    assert after[0] <= before[0], f"tasks {before[0]} -> {after[0]}"
    assert after[1] <= before[1], f"threads {before[1]} -> {after[1]}"
    assert after[2] <= before[2] + grown, f"fds {before[2]} -> {after[2]} (pool grew by {grown})"


async def test_server_shutdown_closes_live_calls(server: tuple[web.AppRunner, str]) -> None:
    runner, url = server
    async with CallClient(url, "echo") as client:
        assert len(runner.app[CALLS].calls) == 1
        await runner.app[CALLS].close_all(timeout=5)
        assert not runner.app[CALLS].calls
        for _ in range(100):  # the server's DTLS close reaches the client
            if client.pc.connectionState in ("closed", "failed"):
                break
            await asyncio.sleep(0.05)
        assert client.pc.connectionState in ("closed", "failed")


class StuckAgent(EchoAgent):
    """An agent whose close never returns (a wedged backend)."""

    async def close(self) -> None:
        await super().close()
        await asyncio.sleep(60)


class BrokenAgent(EchoAgent):
    """An agent whose close raises."""

    async def close(self) -> None:
        await super().close()
        raise RuntimeError("agent close failed on purpose")


def factory_of(agent_class: type[EchoAgent]) -> AgentFactory:
    echo = load_personas()["echo"]

    def make(session: CallSession, persona_id: str, track: AgentTrack, emit: Emit) -> EchoAgent:
        return agent_class(echo, track, emit, AgentContext(Settings(), session.user_id, session.session_id))

    return make


@pytest.fixture
async def manager() -> AsyncIterator[CallManager]:
    manager = CallManager(Settings())
    await manager.start()
    yield manager
    await manager.close_all(timeout=1)


async def open_call(manager: CallManager, agent_class: type[EchoAgent]) -> tuple[Call, RTCPeerConnection]:
    """A real aiortc peer calling ``manager`` (answered, not necessarily connected yet)."""
    client = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    client.addTrack(AgentTrack())
    client.createDataChannel("events")
    await client.setLocalDescription(await client.createOffer())
    session = CallSession("session", "user", "echo")
    call = await manager.open_rtc(session, client.localDescription.sdp, factory_of(agent_class))
    await client.setRemoteDescription(RTCSessionDescription(call.pc.localDescription.sdp, "answer"))
    return call, client


async def test_close_all_cancels_a_call_that_does_not_close_in_time(manager: CallManager) -> None:
    call, client = await open_call(manager, StuckAgent)
    try:
        started = time.monotonic()
        await manager.close_all(timeout=0.3)
        elapsed = time.monotonic() - started
    finally:
        await client.close()
    assert elapsed < 4.0, f"close_all took {elapsed:.1f} s"
    assert call.closed.is_set()
    assert call.pc.connectionState == "closed"
    assert not manager.calls
    assert len(manager.tasks) == 0 and len(call.tasks) == 0, (manager.tasks.names(), call.tasks.names())
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith(call.log_prefix)]


async def test_call_close_finishes_when_the_agent_close_raises(
    manager: CallManager, caplog: pytest.LogCaptureFixture
) -> None:
    call, client = await open_call(manager, BrokenAgent)
    try:
        await asyncio.wait_for(call.close("test"), 10)
        await asyncio.wait_for(call.close("again"), 1)  # idempotent
    finally:
        await client.close()
    assert call.closed.is_set()
    assert call.pc.connectionState == "closed"
    assert len(call.tasks) == 0
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        f"{call.log_prefix}: agent close failed"]


async def test_server_shutdown_hangs_up_websocket_calls_first(settings: Settings) -> None:
    """aiohttp's shutdown closes calls in ``on_shutdown``: a live WebSocket call ends at once
    (not after the handler time-out), while storage is still open for its last writes."""
    runner, url = await start_server(settings)
    store = runner.app[STORE]
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{url}/ws?persona=echo") as ws:
        assert (await ws.receive_json(timeout=10))["type"] == "turn"
        call = next(iter(runner.app[CALLS].calls.values()))

        async def pool_open_when_closed() -> bool:
            await call.closed.wait()
            return not store.pool.is_closing()

        watcher = asyncio.create_task(pool_open_when_closed())
        started = time.monotonic()
        await runner.cleanup()
        elapsed = time.monotonic() - started
        closing = await ws.receive(timeout=5)
    assert await watcher, "storage was closed before the call"
    assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
    assert elapsed < 4.0, f"shutdown took {elapsed:.1f} s: the call was left to the handler time-out"
