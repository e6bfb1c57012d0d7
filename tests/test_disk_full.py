"""A full disk under the data dir (a small tmpfs, filled by the test): a consenting call goes on
end to end, the recording and memory writes that hit "no space left" are dropped, logged once
and counted, and once space is freed the next call's recording is kept and exported, with
nothing restarted. The LLM is the local OpenAI-compatible stand-in; STT, TTS, embeddings and
Milvus Lite (``DATA_DIR/memory.db``) are the real local ones."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from parley import deps
from parley.call.client import CallClient
from parley.config import Settings
from signaling.keys import CALLS, RECORDINGS
from tests.conftest import start_server
from tests.fake_openai import FakeOpenAI
from tests.test_faults import KEY, dependency_errors, errors_logged, reply_text, warnings_about

TMPFS_SIZE = "16m"  # room for Milvus Lite's files and a recording, small enough to fill at once


@contextlib.contextmanager
def small_tmpfs() -> Iterator[Path]:
    """A fresh tmpfs of ``TMPFS_SIZE``, unmounted afterwards; skips where mounting is not allowed."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs as the data dir needs root")
    mount_point = Path(tempfile.mkdtemp(prefix="parley-disk-"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0755", "tmpfs", str(mount_point)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        mount_point.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
        mount_point.rmdir()


def fill(path: Path) -> int:
    """Write ``path`` until the disk is full; the bytes written."""
    written = 0
    block = b"\0" * 65536
    with path.open("wb", buffering=0) as f:
        while True:
            try:
                written += f.write(block) or 0
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                if len(block) == 1:
                    return written
                block = block[: len(block) // 2]  # fill the last blocks too


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI(KEY, reply="Indeed.", token_delay_s=0.0)
    await server.start()
    yield server
    await server.stop()


async def calls_stored(app: web.Application) -> None:
    """Wait (bounded) until the server has closed its calls and handled their recordings."""
    for _ in range(150):
        if not app[CALLS].calls:
            break
        await asyncio.sleep(0.1)
    assert not app[CALLS].calls, "the server did not notice the hang-up"
    assert await app[RECORDINGS].idle(15.0)


async def exported_recordings(url: str, session: dict) -> list[dict]:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/api/users/{session['user_id']}/export-token",
                             headers={"Authorization": f"Bearer {session['token']}"}) as r:
            assert r.status == 201
            token = (await r.json())["token"]
        async with http.get(f"{url}/api/users/{session['user_id']}/export",
                            headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 200
            return list((await r.json())["recordings"])


async def recorded_call(url: str, said: np.ndarray, remember: str) -> dict:
    """A consenting call: a spoken question answered (audio in, events and voice out), then a
    statement to remember; returns the session."""
    async with CallClient(url, "socrates", record=True) as client:
        assert client.recording
        since = time.monotonic()
        client.say(said)
        done = await client.wait_event(lambda e: e["type"] == "llm-done", timeout=60, since=since)
        assert done["text"] == "Indeed."
        await client.wait_event(lambda e: e["type"] == "tts-end", timeout=20, since=since)
        assert client.voiced_between(since), "the reply was not heard"
        assert await reply_text(client, remember) == "Indeed."
        return client.session


def recording_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return warnings_about(caplog, "disk unavailable")


async def test_a_full_data_dir_drops_recordings_and_memories_not_the_call(
        tmp_path: Path, fake: FakeOpenAI, database_url: str, speech: Callable[[str], np.ndarray],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    deps.reset()
    said = speech("What is virtue?")
    with small_tmpfs() as data:
        settings = Settings(data_dir=str(data), database_url=database_url, persona="socrates", stt="local",
                            tts="local", embed="local", llm="openai", openai_api_key=KEY,
                            openai_base_url=fake.base_url, load_limit=1000.0)
        runner, url = await start_server(settings)
        filler = data / "filler"
        try:
            await asyncio.to_thread(fill, filler)
            disk_errors, milvus_errors = dependency_errors("disk"), dependency_errors("milvus")
            for _ in range(2):  # two calls, one warning: the outage is logged once
                session = await recorded_call(url, said, "Remember that my favourite colour is green.")
                await calls_stored(runner.app)
                assert await exported_recordings(url, session) == []  # nothing half-written is listed
            warnings = recording_warnings(caplog)
            assert len(warnings) == 1, warnings
            assert "No space left" in warnings[0] and "call " in warnings[0] and str(data) in warnings[0]
            assert dependency_errors("disk") >= disk_errors + 2  # counted for each call
            # memory writes into Milvus Lite that found no space were skipped as the same outage:
            # counted, not logged again, and Milvus itself is not taken for down (recall goes on)
            assert dependency_errors("disk") >= disk_errors + 4
            assert dependency_errors("milvus") == milvus_errors
            assert not warnings_about(caplog, "milvus unavailable")
            assert not errors_logged(caplog)
            spool = data / "recordings" / "spool"
            assert not [p for p in spool.rglob("*") if p.is_file()], "a partial recording was left behind"

            await asyncio.to_thread(filler.unlink)  # space again: nothing is restarted
            session = await recorded_call(url, said, "Remember that my favourite animal is the owl.")
            await calls_stored(runner.app)
            (entry,) = await exported_recordings(url, session)
            assert entry["channels"] == ["caller", "agent"] and entry["duration_s"] > 1.0
            assert Path(entry["stored_at"]).is_relative_to(data / "recordings" / session["user_id"])
            assert any("disk is back" in r.getMessage() for r in caplog.records)
            assert len(recording_warnings(caplog)) == 1
            assert not errors_logged(caplog)
        finally:
            await runner.cleanup()
