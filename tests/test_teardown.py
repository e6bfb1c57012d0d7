"""50 sequential calls must leave no tasks, threads or file descriptors behind."""

from __future__ import annotations

import asyncio
import os
import threading

from aiohttp import web

from media_server.client import CallClient
from signaling.keys import CALLS, STORE


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
