"""Shared services a multi-worker node starts for itself when none is configured.

Workers of one node must share state — who owns which call (Redis), users and sessions
(Postgres), memory vectors (Milvus) and the token secret — but a single machine should still
run with nothing installed beyond the package. So the supervisor starts, once, what is not
configured: a ``redis-server`` on a free loopback port, the embedded Postgres, a Milvus Lite
server process (Lite's file opens in one process only; behind its own gRPC port all workers
can use it), and the secret file; then it hands the workers their URLs in their settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

from parley.config import Settings
from signaling.auth import load_secret
from storage.postgres import EmbeddedPostgres

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} while starting")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on port {port} within {START_TIMEOUT_S:.0f} s")


def _start(cmd: list[str], port: int, what: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(port, proc, what)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    logger.info("embedded %s on 127.0.0.1:%d (pid %d)", what, port, proc.pid)
    return proc


@contextlib.contextmanager
def shared_services(settings: Settings) -> Iterator[Settings]:
    """Settings whose Redis, Postgres and Milvus are running (started here when unset)."""
    procs: list[subprocess.Popen[bytes]] = []
    postgres: EmbeddedPostgres | None = None
    load_secret(settings)  # created once here, not raced by the workers
    try:
        if not settings.redis_url:
            binary = shutil.which("redis-server")
            if binary is None:
                raise RuntimeError("several workers need Redis: set PARLEY_REDIS_URL or install redis-server")
            port = _free_port()
            procs.append(_start([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no"], port, "redis-server"))
            settings = dataclasses.replace(settings, redis_url=f"redis://127.0.0.1:{port}/0")
        if not settings.milvus_uri:
            port = _free_port()
            data = settings.data_path / "memory.db"
            data.parent.mkdir(parents=True, exist_ok=True)
            procs.append(_start([sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(data),
                                 "--host", "127.0.0.1", "--port", str(port)], port, "Milvus Lite"))
            # a Milvus Lite server: its AUTOINDEX misses matches under filters, as in-process
            index = "FLAT" if settings.milvus_index == "auto" else settings.milvus_index
            settings = dataclasses.replace(settings, milvus_uri=f"http://127.0.0.1:{port}", milvus_index=index)
        if not settings.database_url:
            postgres = asyncio.run(EmbeddedPostgres.start(settings.data_path / "pg"))
            settings = dataclasses.replace(settings, database_url=postgres.url)
        yield settings
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if postgres is not None:
            asyncio.run(postgres.stop())
