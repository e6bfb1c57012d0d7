"""Helpers for the scale-out tests: real ``parley serve`` nodes, real WHIP peers, the registry.

Each node gets its own Redis database number so concurrent tests sharing one redis-server
never see each other's workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from media_server.agent_track import AgentTrack
from signaling.registry import RedisRegistry, WorkerInfo

_DB_NUMBERS = itertools.count(1)


def redis_db(url: str) -> str:
    """``url`` on a Redis database number of its own (1–15)."""
    base = url.rsplit("/", 1)[0]
    return f"{base}/{(next(_DB_NUMBERS) + os.getpid()) % 15 + 1}"


async def new_database(pg_url: str, name: str) -> str:
    admin = await asyncpg.connect(pg_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return urlunsplit(urlsplit(pg_url)._replace(path=f"/{name}"))


async def workers(redis_url: str, node: str | None = None) -> list[WorkerInfo]:
    registry = RedisRegistry(redis_url)
    try:
        return [w for w in await registry.workers() if node is None or w.node == node]
    finally:
        await registry.close()


def wait_for_workers(redis_url: str, node: str, count: int, timeout: float = 150.0,
                     exclude: set[str] | None = None) -> list[WorkerInfo]:
    """Block until ``node`` has ``count`` routable workers (other than ``exclude``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live = [w for w in asyncio.run(workers(redis_url, node)) if w.url and w.id not in (exclude or set())]
        if len(live) >= count:
            return live
        time.sleep(0.5)
    raise TimeoutError(f"node {node} did not get {count} workers within {timeout:.0f} s")


@dataclass
class Node:
    """A ``parley serve`` process tree (supervisor + workers)."""

    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str] = field(default_factory=dict)

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout=timeout)


@contextlib.contextmanager
def parley_node(name: str, port: int, data_dir: Path, env: dict[str, str], workers: int = 2,
                prefix: list[str] | None = None, host: str = "127.0.0.1") -> Iterator[Node]:
    """``parley serve --workers N`` (optionally inside ``prefix``, e.g. ``ip netns exec X``)."""
    log = data_dir / f"{name}.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "PARLEY_DATA_DIR": str(data_dir), "PARLEY_PERSONA": "echo", "PARLEY_NODE_ID": name,
                "PARLEY_LOG_LEVEL": "INFO", "PARLEY_SECRET": "cluster-test-secret",
                # routing is under test, not flood control: one test address opens many calls
                "PARLEY_RATE_LIMIT": "0", "PARLEY_USER_RATE_LIMIT": "0", "PARLEY_PENDING_CALLS_PER_IP": "100",
                "PARLEY_MAX_CALLS_PER_USER": "0", "PARLEY_CONNECT_TIMEOUT_S": "30", "PARLEY_LIVENESS_TIMEOUT_S": "30",
                **env}
    cmd = [*(prefix or []), "env", f"PYTHONPATH={os.environ.get('PYTHONPATH', '')}",
           sys.executable, "-m", "parley", "serve", "--workers", str(workers), "--port", str(port), "--host", host]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=full_env, stdout=out, stderr=subprocess.STDOUT, cwd=os.getcwd())
    node = Node(name, f"http://{host}:{port}", proc, log, full_env)
    try:
        yield node
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def _consume(track: MediaStreamTrack) -> None:
    with contextlib.suppress(MediaStreamError):
        while True:
            await track.recv()


@dataclass
class WhipPeer:
    """A real aiortc WHIP publisher whose call the server answered."""

    pc: RTCPeerConnection
    location: str
    owner: str
    tasks: list[asyncio.Task[None]]

    @property
    def call_id(self) -> str:
        return self.location.rsplit("/", 1)[1]

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.pc.close()


async def whip_call(http: aiohttp.ClientSession, url: str) -> WhipPeer:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    tasks: list[asyncio.Task[None]] = []
    pc.on("track", lambda track: tasks.append(asyncio.ensure_future(_consume(track))))
    pc.addTrack(AgentTrack())
    await pc.setLocalDescription(await pc.createOffer())
    async with http.post(f"{url}/whip?persona=echo", data=pc.localDescription.sdp,
                         headers={"Content-Type": "application/sdp"}) as r:
        body = await r.text()
        if r.status != 201:
            await pc.close()
            raise RuntimeError(f"WHIP POST: {r.status} {body}")
        location, owner = r.headers["Location"], r.headers["X-Parley-Worker"]
    await pc.setRemoteDescription(RTCSessionDescription(body, "answer"))
    return WhipPeer(pc, location, owner, tasks)


def fresh_connections() -> aiohttp.ClientSession:
    """A client that opens a new TCP connection per request, so SO_REUSEPORT spreads them."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                 timeout=aiohttp.ClientTimeout(total=30))
