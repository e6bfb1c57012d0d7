"""Floods: unconnected offers, request bursts and one greedy user cannot lock others out."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from bench.sdp_corpus import aiortc_offers
from bench.serverproc import free_port
from parley.call.client import CallClient
from parley.config import Settings
from signaling.keys import CALLS
from tests.conftest import start_server
from tests.waits import until, until_async

FLOODER = "127.0.0.2"  # another loopback address: the kernel routes all of 127/8 here


def from_address(address: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))


@pytest.fixture
async def flood_server(settings: Settings) -> AsyncIterator[tuple[web.AppRunner, str]]:
    runner, url = await start_server(dataclasses.replace(settings, connect_timeout_s=2.0, rate_limit=1000))
    try:
        yield runner, url
    finally:
        await runner.cleanup()


async def test_100_unanswered_offers_do_not_stop_another_client(flood_server: tuple[web.AppRunner, str]) -> None:
    runner, url = flood_server
    offer = (await aiortc_offers())["aiortc-audio-dc"]
    statuses: Counter[int] = Counter()
    async with from_address(FLOODER) as http:
        for _ in range(100):  # the answers are thrown away: the media never connects
            async with http.post(f"{url}/api/offer", json={"sdp": offer, "type": "offer"}) as r:
                statuses[r.status] += 1
                if r.status == 429:
                    assert int(r.headers["Retry-After"]) >= 1
    assert statuses[200] <= 8 and statuses[429] >= 90, statuses
    assert not {s for s in statuses if s >= 500}, statuses
    async with CallClient(url, "echo") as client:  # a different address, at once
        client.send({"type": "ping", "t": 1})
        assert (await client.wait_event(lambda e: e["type"] == "pong", timeout=10))["t"] == 1
        # and the flooder's unconnected calls are gone within the connect deadline
        assert await until(lambda: len(runner.app[CALLS].calls) == 1, timeout=6)


async def burst(url: str, path: str, n: int, **kwargs: object) -> list[tuple[int, str | None]]:
    out = []
    async with aiohttp.ClientSession() as http:
        for _ in range(n):
            async with http.post(f"{url}{path}", **kwargs) as r:  # type: ignore[arg-type]
                out.append((r.status, r.headers.get("Retry-After")))
    return out


async def test_session_burst_gets_429_with_retry_after(settings: Settings) -> None:
    runner, url = await start_server(dataclasses.replace(settings, rate_limit=5))
    try:
        results = await burst(url, "/api/sessions", 8, json={"persona": "echo"})
        assert [s for s, _ in results[:5]] == [201] * 5
        assert all(s == 429 and retry and int(retry) >= 1 for s, retry in results[5:]), results
        async with from_address(FLOODER) as http, http.post(f"{url}/api/sessions", json={"persona": "echo"}) as r:
            assert r.status == 201  # another address has its own bucket
    finally:
        await runner.cleanup()


async def test_user_call_cap(settings: Settings) -> None:
    runner, url = await start_server(dataclasses.replace(settings, max_calls_per_user=2))
    try:
        async with CallClient(url, "echo") as first:
            token = first.session["token"]
            async with CallClient(url, "echo", token=token):
                with pytest.raises(Exception, match="429|too_many_calls"):
                    async with CallClient(url, "echo", token=token):
                        pass
    finally:
        await runner.cleanup()


async def test_redis_buckets_are_shared_and_survive_redis_stopping(settings: Settings) -> None:
    port = free_port()  # a Redis of its own: this test stops it
    redis = await asyncio.create_subprocess_exec(
        "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        stdout=asyncio.subprocess.DEVNULL)
    redis_url = f"redis://127.0.0.1:{port}/0"
    async with aioredis.from_url(redis_url) as probe:
        assert await until_async(probe.ping, timeout=10)
    shared = dataclasses.replace(settings, rate_limit=4, redis_url=redis_url)
    one, url_one = await start_server(shared)
    two, url_two = await start_server(shared)
    try:
        a = await burst(url_one, "/api/sessions", 3, json={"persona": "echo"})
        b = await burst(url_two, "/api/sessions", 3, json={"persona": "echo"})
        assert [s for s, _ in a + b] == [201] * 4 + [429] * 2  # one bucket for both servers
        redis.terminate()
        await redis.wait()
        c = await burst(url_one, "/api/sessions", 6, json={"persona": "echo"})
        statuses = [s for s, _ in c]  # local buckets take over: limited, never a 5xx
        assert set(statuses) <= {201, 429} and 429 in statuses, statuses
    finally:
        await one.cleanup()
        await two.cleanup()
        if redis.returncode is None:
            redis.terminate()
            await redis.wait()
