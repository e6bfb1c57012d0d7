"""Two nodes on one machine, each in its own network namespace, sharing one Redis and one Postgres.

Namespaces ``A`` and ``B`` hang off a bridge in the test's namespace (veth pairs), so the
test's client reaches both nodes and the nodes reach each other only over that link, by
their own addresses — as two hosts would. Redis and Postgres are shared through unix
sockets (path-based sockets cross network namespaces). A call placed through node A that
node B owns must work end to end (offer forwarded A → B, media straight to B); stopping
node B must end its calls with an event, and new calls through A must then stay on A.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from parley.call.client import CallClient
from tests.cluster import Node, new_database, parley_node, wait_for_workers, workers
from tests.test_call import say_and_wait_reply

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                reason="network namespaces need root and iproute2")
PORT = 8080


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@pytest.fixture(scope="module")
def netns() -> Iterator[dict[str, str]]:
    """Namespaces A and B on a private bridge; yields {name: address}."""
    tag = uuid.uuid4().hex[:5]
    subnet = f"10.{random.randint(100, 250)}.{random.randint(0, 255)}"
    bridge, spaces = f"pbr{tag}", {"A": f"{subnet}.1", "B": f"{subnet}.2"}
    created: list[str] = []
    try:
        _ip("link", "add", bridge, "type", "bridge")
        _ip("addr", "add", f"{subnet}.254/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for name, address in spaces.items():
            ns, host_end, ns_end = f"p{name}{tag}", f"v{name}{tag}", f"e{name}{tag}"
            _ip("netns", "add", ns)
            created.append(ns)
            _ip("link", "add", host_end, "type", "veth", "peer", "name", ns_end)
            _ip("link", "set", ns_end, "netns", ns)
            _ip("link", "set", host_end, "master", bridge, "up")
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", ns_end)
            _ip("-n", ns, "link", "set", ns_end, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield {name: address for name, address in spaces.items()} | {f"ns{n}": f"p{n}{tag}" for n in spaces}
    finally:
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, timeout=20)


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server reachable from every namespace through a unix socket."""
    directory = Path(tmp_path_factory.mktemp("redis"))
    directory.chmod(0o755)
    sock = directory / "redis.sock"
    proc = subprocess.Popen(["redis-server", "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "777",
                             "--save", "", "--appendonly", "no"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "ready to accept connections" in line.lower():
            break
    try:
        yield f"unix://{sock}?db=0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()


@pytest.fixture(scope="module")
def nodes(netns: dict[str, str], shared_redis: str, pg_server_url: str,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Node]]:
    if "host=" not in pg_server_url:
        pytest.skip("the shared Postgres must be reachable through a unix socket from the namespaces")
    database = asyncio.run(new_database(pg_server_url, f"parley_multinode_{uuid.uuid4().hex[:8]}"))
    base = tmp_path_factory.mktemp("multinode")
    env = {"PARLEY_REDIS_URL": shared_redis, "PARLEY_DATABASE_URL": database, "PARLEY_DRAIN_S": "1",
           "PARLEY_LOAD_LIMIT": "1000"}
    started: dict[str, Node] = {}
    with parley_node("A", PORT, base / "A", {**env, "PARLEY_INTERNAL_HOST": netns["A"], "PARLEY_MAX_CALLS": "1"},
                     workers=1,
                     prefix=["ip", "netns", "exec", netns["nsA"]], host=netns["A"]) as a, \
         parley_node("B", PORT, base / "B", {**env, "PARLEY_INTERNAL_HOST": netns["B"]}, workers=1,
                     prefix=["ip", "netns", "exec", netns["nsB"]], host=netns["B"]) as b:
        started.update(A=a, B=b)
        for name in started:
            wait_for_workers(shared_redis, name, 1)
        yield started


def _node_of(client: CallClient) -> str:
    return client.owner.split(":", 1)[0]


async def _call_owned_by(url: str, node: str, tries: int = 4) -> tuple[CallClient, list[CallClient]]:
    """A call placed through ``url`` that landed on ``node``, and the calls that did not.

    Placement follows measured load, so it may keep choosing node A; node A takes one call at
    most (``PARLEY_MAX_CALLS=1``), so once it holds one the next call must go to B. The caller
    hangs up the others when done.
    """
    others: list[CallClient] = []
    for _ in range(tries):
        client = OwnedCallClient(url, "echo")
        await client.connect()
        if _node_of(client) == node:
            return client, others
        others.append(client)
    for other in others:
        await other.close()
    raise AssertionError(f"no call through {url} was placed on node {node} in {tries} tries")


async def _until_idle(redis_url: str, node: str) -> None:
    for _ in range(60):  # bounded: the node's calls end within a few heartbeats
        if not sum(w.calls for w in await workers(redis_url, node)):
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"node {node} still has calls")


class OwnedCallClient(CallClient):
    """A :class:`CallClient` that remembers which worker answered its offer."""

    owner = ""

    async def connect(self, timeout: float = 15.0) -> None:
        await super().connect(timeout)
        from tests.cluster import fresh_connections

        async with fresh_connections() as http, http.post(f"{self.url}/api/calls/{self.call_id}/events",
                                                          json={"type": "ping"}) as r:
            self.owner = r.headers["X-Parley-Worker"]  # served by the owner wherever it landed


async def test_a_call_through_node_a_owned_by_node_b_works_end_to_end(
        nodes: dict[str, Node], speech: Callable[..., np.ndarray]) -> None:
    client, others = await _call_owned_by(nodes["A"].url, "B")
    try:
        t_end, t_reply = await say_and_wait_reply(client, speech("Testing the second node, one two three."))
        assert 0 < t_reply - t_end < 3.0
    finally:
        for each in (client, *others):
            await each.close()


async def test_stopping_node_b_ends_its_calls_and_new_calls_stay_on_a(nodes: dict[str, Node]) -> None:
    redis_url = nodes["A"].env["PARLEY_REDIS_URL"]
    await _until_idle(redis_url, "A")
    on_b, others = await _call_owned_by(nodes["A"].url, "B")
    try:
        t0 = time.monotonic()
        nodes["B"].proc.terminate()
        ended = await on_b.wait_event(lambda e: e["type"] == "error", timeout=15)
        assert ended["code"] == "server_draining" and time.monotonic() - t0 < 10
    finally:
        for each in (on_b, *others):
            await each.close()
    assert await asyncio.to_thread(nodes["B"].proc.wait, 60) == 0
    assert not await workers(redis_url, "B")  # it left the registry on the way out
    for _ in range(2):
        await _until_idle(redis_url, "A")
        client = OwnedCallClient(nodes["A"].url, "echo")
        await client.connect()
        await client.close()
        assert _node_of(client) == "A"
