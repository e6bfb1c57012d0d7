"""Dial-out on ``parley serve --workers 2``: each answer reaches the worker that dialled.

Both workers share the SIP port (``SO_REUSEPORT``), and the kernel hashes every packet from
one address to one worker -- a callee's ``200 OK`` included. A worker therefore dials out
from a port of its own, which its Via and Contact name; without that, the dial-outs of one
of the two workers are never answered (and run into the answer time-out). A dial-out into a
room is placed on the room's owner like any join. Real sipp (its built-in UAS) answers.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from signaling.proxy import FORWARDED_BY
from tests.cluster import Node, fresh_connections, new_database, parley_node, redis_db, wait_for_workers, workers
from tests.sip.conftest import free_port

PER_WORKER = 2


@pytest.fixture
def uas(tmp_path: Path) -> Iterator[int]:
    """sipp's built-in UAS on loopback: answers every INVITE (PCMU), waits for the BYE."""
    if shutil.which("sipp") is None:
        pytest.fail("sipp is not installed (infra/system-deps.sh installs sip-tester)")
    port = free_port(both=False)
    proc = subprocess.Popen(["sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", str(port), "-nostdin",
                             "-timeout", "300s", "-trace_err"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def sip_cluster(redis_url: str, pg_server_url: str, tmp_path: Path) -> Iterator[Node]:
    name = f"s{uuid.uuid4().hex[:6]}"
    env = {"PARLEY_REDIS_URL": redis_db(redis_url),
           "PARLEY_DATABASE_URL": asyncio.run(new_database(pg_server_url, f"parley_sipw_{name}")),
           "PARLEY_SIP_PORT": str(free_port()), "PARLEY_LOAD_LIMIT": "1000", "PARLEY_DRAIN_S": "2"}
    with parley_node(name, free_port(), tmp_path / "node", env) as node:
        wait_for_workers(env["PARLEY_REDIS_URL"], name, 2)
        yield node
        assert node.stop() == 0, node.log.read_text()[-3000:]


async def _dial(http: Any, url: str, token: str, request: dict[str, str]) -> str:
    """One dial-out; the worker that answered the request (it holds the call)."""
    headers = {"Authorization": f"Bearer {token}", FORWARDED_BY: "test"}  # honoured on internal sockets only
    async with http.post(f"{url}/api/sip/calls", json=request, headers=headers) as r:
        assert r.status == 201, (r.headers.get("X-Parley-Worker"), await r.text())
        return str(r.headers["X-Parley-Worker"])


async def test_dial_outs_from_both_workers_are_answered(sip_cluster: Node, uas: int) -> None:
    # placement would pick the less loaded worker every time: ask each worker directly, on
    # its internal socket, as a forwarded request (served where it arrives)
    both = await workers(sip_cluster.env["PARLEY_REDIS_URL"], sip_cluster.name)
    assert len(both) == 2 and all(w.url for w in both), both
    async with fresh_connections() as http:
        async with http.post(f"{sip_cluster.url}/api/sessions", json={"persona": "echo"}) as r:
            token = (await r.json())["token"]
        request = {"to": f"sip:uas@127.0.0.1:{uas}", "persona": "echo"}
        answered = [await _dial(http, str(w.url), token, request) for w in both for _ in range(PER_WORKER)]
    assert answered == [w.id for w in both for _ in range(PER_WORKER)]


async def test_a_dial_out_into_a_room_reaches_the_rooms_worker(sip_cluster: Node, uas: int) -> None:
    async with fresh_connections() as http:
        async with http.post(f"{sip_cluster.url}/api/rooms", json={"persona": "echo"}) as r:
            room, owner = await r.json(), r.headers["X-Parley-Worker"]
        request = {"to": f"sip:uas@127.0.0.1:{uas}", "room_id": room["room_id"]}
        workers = [await _dial(http, sip_cluster.url, room["token"], request) for _ in range(4)]
    assert workers == [owner] * 4
