"""Churn over WebRTC, WHIP and WebSocket: calls that hang up and calls whose client vanishes
leave nothing behind.

A vanished client (its sockets closed under it: no BYE, no DTLS close, no consent replies)
must be declared gone within the liveness timeout and its call closed with a logged reason;
afterwards tasks, threads and fds are back at baseline. ``parley bench churn`` runs 1 000.
"""

from __future__ import annotations

import logging
import re

import pytest
from aiohttp import web

from bench.churn import churn, one_call, vanish
from parley.call.client import CallClient
from signaling.keys import CALLS, STORE
from tests.test_teardown import resources, settle
from tests.waits import until

CALLS_N = 16  # a quarter vanish


async def test_vanished_client_is_declared_gone_within_seconds(
    server: tuple[web.AppRunner, str], caplog: pytest.LogCaptureFixture
) -> None:
    runner, url = server
    caplog.set_level(logging.INFO)
    async with CallClient(url, "echo") as client:
        client.send({"type": "ping", "t": 0})
        await client.wait_event(lambda e: e["type"] == "pong", timeout=10)
        vanish(client)
        timeout = runner.app[CALLS].settings.liveness_timeout_s
        assert await until(lambda: not runner.app[CALLS].calls, timeout=timeout + 4)
    ended = [r.getMessage() for r in caplog.records if "call ended" in r.getMessage()]
    assert len(ended) == 1 and "reason: peer gone" in ended[0], ended
    assert re.search(r"echo, \d+\.\d s", ended[0])


async def test_churn_leaves_nothing_behind(server: tuple[web.AppRunner, str], caplog: pytest.LogCaptureFixture) -> None:
    runner, url = server
    caplog.set_level(logging.INFO)
    pool = runner.app[STORE].pool
    await one_call(url, abrupt=False, hold_s=0.1)  # warm-up: executors and caches made once per process
    assert await until(lambda: not runner.app[CALLS].calls, timeout=10)
    before, pool_before = await settle(resources()), pool.get_size()
    caplog.clear()
    outcome = await churn(url, CALLS_N, concurrency=4)
    assert outcome == {"clean": CALLS_N * 3 // 4, "vanished": CALLS_N // 4, "failed": 0}
    timeout = runner.app[CALLS].settings.liveness_timeout_s
    assert await until(lambda: not runner.app[CALLS].calls, timeout=timeout + 10), len(runner.app[CALLS].calls)
    grown = pool.get_size() - pool_before
    after = await settle((before[0], before[1], before[2] + grown))
    assert after[0] <= before[0], f"tasks {before[0]} -> {after[0]}"
    assert after[1] <= before[1], f"threads {before[1]} -> {after[1]}"
    assert after[2] <= before[2] + grown, f"fds {before[2]} -> {after[2]}"
    messages = [r.getMessage() for r in caplog.records]
    ended = [m for m in messages if "call ended" in m]
    assert len(ended) == CALLS_N, ended  # one start line and one end line per call
    assert sum("call started" in m for m in messages) == CALLS_N
    transports = ("webrtc", "whip", "ws")  # churn()'s rotation; vanished WebSockets miss heartbeats
    vanished_media = sum(1 for i in range(CALLS_N) if i % 4 == 3 and transports[i % 3] != "ws")
    assert sum("reason: peer gone" in m for m in ended) == vanished_media, ended
    assert sum("call ended: whip" in m or "call ended: webrtc" in m for m in ended) == CALLS_N - CALLS_N // 3
