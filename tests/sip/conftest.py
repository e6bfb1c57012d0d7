"""SIP fixtures: a real Parley server with its SIP listener on loopback, and real peers.

Peers are the Debian ``sip-tester`` (sipp) and ``baresip`` binaries; sipp runs in a
working directory where ``pcap/`` points at the captures its package ships, which is how
its scenarios name them.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from aiohttp import web

from media_server.sip.server import SipServer
from parley.config import Settings
from signaling.keys import SIP
from tests.conftest import _with_database, start_server

SCENARIOS = Path(__file__).parent / "scenarios"
PCAPS = Path("/usr/share/sip-tester")


def free_port(kind: int = socket.SOCK_DGRAM, both: bool = True) -> int:
    """A port free for UDP (and TCP when ``both``) on loopback."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if not both:
            return port
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                tcp.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port")


def sip_settings_for(data_dir: Path, database_url: str) -> Settings:
    """A node answering SIP on a free loopback port; echo by default, turns end after 1.5 s
    of silence so that only ``#`` can end one right after the speech."""
    return Settings(data_dir=str(data_dir), persona="echo", database_url=database_url,
                    sip_port=free_port(), eot_silence_ms=1500)


@contextlib.asynccontextmanager
async def serve_sip(settings: Settings) -> AsyncIterator[tuple[web.AppRunner, SipServer]]:
    """A whole Parley server (HTTP + SIP) on loopback for the duration of the block."""
    runner, _ = await start_server(settings)
    try:
        yield runner, runner.app[SIP]
    finally:
        await runner.cleanup()


@dataclass
class SipNode:
    runner: web.AppRunner
    sip: SipServer
    settings: Settings
    url: str

    @contextlib.contextmanager
    def tuned(self, **values: object) -> Iterator[None]:
        """Change settings that are read per call (ring time, end-of-turn wait) for one test."""
        old = {k: getattr(self.settings, k) for k in values}
        for key, value in values.items():
            setattr(self.settings, key, value)
        try:
            yield
        finally:
            for key, value in old.items():
                setattr(self.settings, key, value)


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def sip_node(pg_server_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SipNode]:
    """One server for all SIP tests: starting a node (models, storage) costs ~5 s each time."""
    name = f"parley_sip_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_server_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        settings = sip_settings_for(tmp_path_factory.mktemp("sipnode") / "data", _with_database(pg_server_url, name))
        runner, url = await start_server(settings)
        try:
            yield SipNode(runner, runner.app[SIP], settings, url)
        finally:
            await runner.cleanup()
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


@dataclass
class SippRun:
    returncode: int
    messages: str  # sipp's -trace_msg log: every SIP message sent and received
    output: str


async def run_sipp(scenario: str, port: int, workdir: Path, service: str = "echo",
                   timeout_s: float = 30.0, extra: tuple[str, ...] = ()) -> SippRun:
    """Run one call of ``scenario`` against 127.0.0.1:``port``; waits for sipp to exit."""
    if shutil.which("sipp") is None:
        pytest.fail("sipp is not installed (infra/system-deps.sh installs sip-tester)")
    pcap = workdir / "pcap"
    if not pcap.exists():
        pcap.symlink_to(PCAPS)
    log = workdir / f"{scenario}.messages.log"
    cmd = [
        "sipp", "-sf", str(SCENARIOS / scenario), f"127.0.0.1:{port}", "-s", service, "-m", "1",
        "-i", "127.0.0.1", "-p", str(free_port(both=False)), "-mp", str(free_port(both=False) & ~1),
        "-nostdin", "-timeout", f"{int(timeout_s)}s", "-timeout_error", "-recv_timeout", "8000",
        "-trace_msg", "-message_file", str(log), *extra,
    ]
    proc = await asyncio.create_subprocess_exec(*cmd, cwd=workdir, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s + 10)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    messages = log.read_text(errors="replace") if log.exists() else ""
    return SippRun(proc.returncode or 0, messages, out.decode(errors="replace")[-3000:])
