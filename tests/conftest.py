"""Shared fixtures: a real Parley server on loopback, and speech made at test time."""

from __future__ import annotations

import shutil
import subprocess
import wave
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web

from parley.config import Settings
from pipeline.audio import RATE, resample


def espeak(text: str, path: Path, speed: int = 160) -> np.ndarray:
    """Speak ``text`` with espeak-ng into ``path``; returns it as 48 kHz mono int16."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make setup installs it)")
    subprocess.run(["espeak-ng", "-s", str(speed), "-w", str(path), text], check=True)
    with wave.open(str(path), "rb") as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return resample(pcm, w.getframerate(), RATE)


@pytest.fixture
def speech(tmp_path: Path) -> Callable[[str], np.ndarray]:
    """Factory: text → 48 kHz mono int16 speech (espeak-ng), made fresh for each test."""
    counter = iter(range(1000))
    return lambda text, speed=160: espeak(text, tmp_path / f"speech{next(counter)}.wav", speed)


def write_wav(path: Path, pcm: np.ndarray, rate: int = RATE) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())
    return path


async def start_server(settings: Settings) -> tuple[web.AppRunner, str]:
    from signaling.app import create_app

    runner = web.AppRunner(create_app(settings), shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=str(tmp_path / "data"), persona="echo")


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
