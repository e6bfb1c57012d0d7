"""WHIP interop: FFmpeg's own ``whip`` muxer (the one in PyAV's wheel) publishes to Parley.

The publisher is a separate process (``tests/whip_publisher.py``) sending spoken WAV audio as
libopus 48 kHz stereo in real time; the server is a real Parley on 127.0.0.1. What the server
heard is read from its Prometheus counters and its conversation window.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from aiortc.rtcdtlstransport import generate_certificate
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client import REGISTRY

from parley.config import REPO_ROOT, Settings
from signaling.keys import CALLS, WINDOW
from signaling.whip import WHIP
from tests.conftest import start_server, write_wav

RATE = 48000


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` (cheap, in-process state) every 50 ms until true or ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


async def start_publisher(url: str, wav: Path, token: str | None = None, tail: float = 60.0,
                          whip_flags: str | None = None, cert: tuple[Path, Path] | None = None
                          ) -> asyncio.subprocess.Process:
    args = [sys.executable, "-m", "tests.whip_publisher", url, str(wav), "--tail", str(tail)]
    if token:
        args += ["--token", token]
    if whip_flags:
        args += ["--whip-flags", whip_flags]
    if cert:
        args += ["--cert", str(cert[0]), "--key", str(cert[1])]
    return await asyncio.create_subprocess_exec(
        *args, cwd=REPO_ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)


async def stop_publisher(proc: asyncio.subprocess.Process, ask: bool = True) -> str:
    """Ask the publisher to stop (it closes the muxer, FFmpeg DELETEs), or just wait for it
    when ``ask`` is false; returns its output."""
    if ask and proc.returncode is None and proc.stdin is not None:
        proc.stdin.write(b"stop\n")
        await proc.stdin.drain()
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=15)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
    return out.decode(errors="replace")


def only_whip_call(runner: web.AppRunner):  # noqa: ANN201 (an RtcCall)
    live = list(runner.app[WHIP].live.values())
    assert len(live) == 1, live
    return live[0]


async def new_session(http: aiohttp.ClientSession, url: str, persona: str) -> dict:
    async with http.post(f"{url}/api/sessions", json={"persona": persona}) as r:
        assert r.status == 201
        return await r.json()


async def error_of(response: aiohttp.ClientResponse) -> tuple[int, str, str]:
    body = await response.json()
    return response.status, body["error"]["code"], body["error"]["message"]


async def test_ffmpeg_publishes_to_echo_with_a_token_then_hangs_up(
    server: tuple[web.AppRunner, str], speech: Callable[..., np.ndarray], tmp_path: Path
) -> None:
    runner, url = server
    pcm = speech("Hello Parley, this is FFmpeg publishing over WHIP.")
    wav = write_wav(tmp_path / "hello.wav", np.concatenate([np.zeros(RATE // 2, np.int16), pcm]))
    frames0, turns0 = sample("parley_frames_received_total"), sample("parley_turns_total", persona="echo")
    async with aiohttp.ClientSession() as http:
        session = await new_session(http, url, "echo")
        proc = await start_publisher(f"{url}/whip?persona=echo", wav, token=session["token"])
        try:
            await wait_until(lambda: sample("parley_turns_total", persona="echo") > turns0,
                             timeout=len(pcm) / RATE + 20, what="the echo persona's turn")
            received = sample("parley_frames_received_total") - frames0
            call = only_whip_call(runner)
            assert call.session.session_id == session["session_id"]  # the Bearer token was honoured
            assert call.persona_id == "echo"
            assert received >= 0.9 * (len(pcm) + RATE // 2) / 960, received
            async with http.delete(f"{url}/whip/{call.id}") as r:
                assert r.status == 204
            assert call.id not in runner.app[CALLS].calls
            async with http.delete(f"{url}/whip/{call.id}") as r:
                status, code, message = await error_of(r)
            assert (status, code) == (404, "session_ended") and "hung up" in message
        finally:
            output = await stop_publisher(proc)
    assert "publishing" in output, output


@pytest.mark.models
async def test_ffmpeg_publishes_a_question_socrates_transcribes_it(
    server: tuple[web.AppRunner, str], speech: Callable[..., np.ndarray], tmp_path: Path
) -> None:
    runner, url = server
    pcm = speech("What is the meaning of a good life?")
    wav = write_wav(tmp_path / "question.wav", np.concatenate([np.zeros(RATE // 2, np.int16), pcm]))
    turns0 = sample("parley_turns_total", persona="socrates")
    proc = await start_publisher(f"{url}/whip?persona=socrates", wav)
    try:
        await wait_until(lambda: sample("parley_turns_total", persona="socrates") > turns0,
                         timeout=len(pcm) / RATE + 45, what="the socrates persona's turn")
        call = only_whip_call(runner)
        window = runner.app[WINDOW]
        user_text = ""
        deadline = time.monotonic() + 10
        while not user_text and time.monotonic() < deadline:
            user_text = " ".join(m.content for m in await window.load(call.session.session_id) if m.role == "user")
            await asyncio.sleep(0.05)
        assert {"meaning", "good", "life"} <= set(re.findall(r"[a-z']+", user_text.lower())), user_text
        async with aiohttp.ClientSession() as http, http.delete(f"{url}/whip/{call.id}") as r:
            assert r.status == 204
    finally:
        output = await stop_publisher(proc)
    assert "publishing" in output, output


@pytest.mark.parametrize(
    ("system_dtls", "whip_flags", "reason"),
    [
        (0, None, "dtls: handshake failed"),  # aiortc's OpenSSL refuses FFmpeg's P-224 certificate
        (1, "dtls_active", "dtls: wrong curve"),  # FFmpeg as DTLS client: its P-224 key is outside its own groups
    ],
)
async def test_a_failed_dtls_handshake_is_logged_once_counted_and_cleaned_up(
    settings: Settings, speech: Callable[..., np.ndarray], tmp_path: Path, caplog: pytest.LogCaptureFixture,
    system_dtls: int, whip_flags: str | None, reason: str,
) -> None:
    caplog.set_level(logging.WARNING, logger="signaling.whip")
    runner, url = await start_server(dataclasses.replace(settings, whip_system_dtls=system_dtls))
    wav = write_wav(tmp_path / "hi.wav", speech("Hello."))
    failures0 = sample("parley_whip_failures_total", stage="dtls")
    try:
        proc = await start_publisher(f"{url}/whip?persona=echo", wav, tail=1.0, whip_flags=whip_flags)
        output = await stop_publisher(proc, ask=False)
        assert proc.returncode == 2 and "DTLS session failed" in output, output
        await wait_until(lambda: not runner.app[CALLS].calls, timeout=10, what="the failed call to close")
        assert sample("parley_whip_failures_total", stage="dtls") == failures0 + 1
        ended = list(runner.app[WHIP].ended)
        assert len(ended) == 1 and not runner.app[WHIP].live
        failed = [r.getMessage() for r in caplog.records if r.name == "signaling.whip" and ended[0] in r.getMessage()]
        assert len(failed) == 1 and failed[0].endswith(f"failed: {reason}"), failed
        async with aiohttp.ClientSession() as http, http.delete(f"{url}/whip/{ended[0]}") as r:
            status, code, message = await error_of(r)
        assert (status, code) == (404, "session_ended") and reason in message
    finally:
        await runner.cleanup()


def p256_pair(directory: Path) -> tuple[Path, Path]:
    """A P-256 key and self-signed certificate (PEM) for FFmpeg's ``cert_file``/``key_file``."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert_path, key_path = directory / "dtls.crt", directory / "dtls.key"
    cert_path.write_bytes(generate_certificate(key).public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_the_curve_is_the_only_problem_ffmpeg_with_p256_connects_on_aiortcs_own_dtls(
    settings: Settings, speech: Callable[..., np.ndarray], tmp_path: Path
) -> None:
    """The root cause, checked the other way round: same FFmpeg, same aiortc DTLS, a P-256 key."""
    runner, url = await start_server(dataclasses.replace(settings, whip_system_dtls=0))
    wav = write_wav(tmp_path / "hi.wav", speech("Hello."))
    frames0, failures0 = sample("parley_frames_received_total"), sample("parley_whip_failures_total", stage="dtls")
    try:
        proc = await start_publisher(f"{url}/whip?persona=echo", wav, cert=p256_pair(tmp_path))
        try:
            await wait_until(lambda: sample("parley_frames_received_total") - frames0 >= 50, timeout=20,
                             what="audio from FFmpeg over aiortc's own DTLS")
        finally:
            output = await stop_publisher(proc)
        assert "publishing" in output, output
        assert sample("parley_whip_failures_total", stage="dtls") == failures0
    finally:
        await runner.cleanup()
