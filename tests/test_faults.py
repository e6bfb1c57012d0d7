"""Services stopping mid-call: the call goes on, the outage is logged once and counted, and
service resumes when the dependency returns. Real Redis, Postgres and Milvus, started here and
stopped; the LLM is the local OpenAI-compatible stand-in, told to hang or fail."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import asyncpg
import numpy as np
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from pymilvus import MilvusClient

from bench.serverproc import free_port
from parley import deps
from parley.call.client import CallClient
from parley.config import Settings
from pipeline.memory.vectors import COLLECTION
from pipeline.services import APOLOGY_TEXT
from storage.postgres import EmbeddedPostgres
from tests.conftest import start_server, world_traversable_dir
from tests.fake_openai import FakeOpenAI, Fault
from tests.waits import until, until_async

KEY = "sk-" + "f" * 32


class RedisProcess:
    """A redis-server of this test's own on a fixed port, so it can be stopped and restarted."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            stdout=asyncio.subprocess.DEVNULL)
        async with aioredis.from_url(self.url) as probe:
            assert await until_async(probe.ping, timeout=10)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()


@pytest.fixture
async def redis_proc() -> AsyncIterator[RedisProcess]:
    proc = RedisProcess()
    await proc.start()
    try:
        yield proc
    finally:
        await proc.stop()


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI(KEY, reply="Indeed.", token_delay_s=0.0)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(autouse=True)
def no_outage_yet() -> None:
    """Outages are logged once per process: start each test as if none had been seen."""
    deps.reset()


def settings_for(tmp_path: Path, fake: FakeOpenAI, database_url: str, redis_url: str = "",
                 **fields: object) -> Settings:
    """Local STT, TTS and embeddings, the LLM on the stand-in server; ``fields`` override."""
    base: dict[str, object] = {"stt": "local", "tts": "local", "embed": "local", "llm": "openai"}
    return Settings(data_dir=str(tmp_path / "data"), database_url=database_url, redis_url=redis_url,
                    persona="socrates", openai_api_key=KEY, openai_base_url=fake.base_url, **(base | fields))


async def reply_to(client: CallClient, text: str, timeout: float = 20) -> float:
    """Seconds from sending ``text`` to the first reply audio (tts-start)."""
    since = time.monotonic()
    client.send({"type": "text", "text": text})
    await client.wait_event(lambda e: e["type"] == "tts-start", timeout=timeout, since=since)
    return time.monotonic() - since


def dependency_errors(name: str) -> float:
    return REGISTRY.get_sample_value("parley_dependency_errors_total", {"dependency": name}) or 0.0


def warnings_about(caplog: pytest.LogCaptureFixture, needle: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and needle in r.getMessage()]


async def test_redis_stopping_mid_call(tmp_path: Path, fake: FakeOpenAI, database_url: str,
                                       redis_proc: RedisProcess, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    runner, url = await start_server(settings_for(tmp_path, fake, database_url, redis_proc.url))
    try:
        async with CallClient(url, "socrates") as client:
            await reply_to(client, "Hello there.")
            errors_before = dependency_errors("redis")
            await redis_proc.stop()
            for words in ("What is virtue?", "And what is courage?"):
                assert await reply_to(client, words) < 10  # the call goes on without Redis
            assert len(warnings_about(caplog, "redis unavailable")) == 1  # logged once per outage
            assert dependency_errors("redis") > errors_before  # counted every time
            async with aiohttp.ClientSession() as http, http.post(f"{url}/api/sessions",
                                                                  json={"persona": "echo"}) as r:
                assert r.status == 201  # rate limits fell back to in-process buckets
            await redis_proc.start()  # the same port, empty
            await reply_to(client, "Is it back?")
            assert any("redis is back" in r.getMessage() for r in caplog.records)
            async with aioredis.from_url(redis_proc.url) as probe:
                assert await probe.keys(f"parley:window:{client.session['session_id']}*")  # windows resumed
    finally:
        await runner.cleanup()


async def test_postgres_stopping_mid_call(tmp_path: Path, fake: FakeOpenAI,
                                          caplog: pytest.LogCaptureFixture) -> None:
    with world_traversable_dir() as directory:
        pg = await EmbeddedPostgres.start(directory / "pg")
        runner, url = await start_server(settings_for(tmp_path, fake, pg.url))
        try:
            async with CallClient(url, "socrates") as client:
                await reply_to(client, "Hello there.")
                await pg.stop()
                for words in ("What is virtue?", "And what is courage?"):
                    assert await reply_to(client, words) < 10  # memory and the turn log are off the path
                async with aiohttp.ClientSession() as http, http.post(f"{url}/api/sessions",
                                                                      json={"persona": "echo"}) as r:
                    assert r.status == 503, await r.text()  # a clear "unavailable", not a 500
                    assert (await r.json())["error"]["code"] == "unavailable" and r.headers["Retry-After"]
            assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert len(warnings_about(caplog, "postgres unavailable")) == 1  # named, though asyncpg raised OSError
        finally:
            await runner.cleanup()
            await pg.stop()


# -- a model backend that hangs or fails --------------------------------------------------


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def event_time(client: CallClient, kind: str, since: float) -> float:
    """When the client received the first ``kind`` event after ``since`` (monotonic)."""
    return next(t for t, e in client.events if t >= since and e["type"] == kind)


def last_end_of_turn(client: CallClient, since: float, before: float) -> float:
    """The end of the turn that was answered (a turn the user resumed is answered later)."""
    return max(t for t, e in client.events if since <= t <= before and e["type"] == "end-of-turn")


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def reply_text(client: CallClient, text: str, timeout: float = 30) -> str:
    """Send ``text``; the reply's text once it has been spoken and the turn reported."""
    since = time.monotonic()
    client.send({"type": "text", "text": text})
    done = await client.wait_event(lambda e: e["type"] == "llm-done", timeout=timeout, since=since)
    await client.wait_event(lambda e: e["type"] == "metrics", timeout=timeout, since=since)
    return str(done["text"])


FAULTS = {  # id: (stage, route on the stand-in server, fault, reason counted, settings)
    "llm-hang": ("llm", "chat", Fault(delay_s=60.0, times=1), "timeout", {}),
    "llm-500": ("llm", "chat", Fault(status=500, times=1), "error", {}),
    "tts-500": ("tts", "speech", Fault(status=500, times=1), "error", {"tts": "openai"}),
    "stt-500": ("stt", "transcriptions", Fault(status=500, times=1), "error", {"stt": "openai"}),
}


@pytest.mark.parametrize("case", FAULTS)
async def test_a_turn_no_backend_can_answer_gets_a_spoken_apology(
        tmp_path: Path, fake: FakeOpenAI, database_url: str, speech: Callable[[str], np.ndarray],
        case: str, caplog: pytest.LogCaptureFixture) -> None:
    """No local fallback (PARLEY_FALLBACK=none): nothing can answer, so the agent apologizes."""
    stage, route, fault, reason, fields = FAULTS[case]
    caplog.set_level(logging.INFO)
    runner, url = await start_server(settings_for(tmp_path, fake, database_url, fallback="none", **fields))
    try:
        async with CallClient(url, "socrates") as client:
            before = sample("parley_reply_fallbacks_total", stage=stage, reason=reason)
            fake.faults[route] = fault
            since = time.monotonic()
            client.say(speech("What is virtue?"))
            done = await client.wait_event(lambda e: e["type"] == "llm-done", timeout=50, since=since)
            await client.wait_event(lambda e: e["type"] == "tts-end", timeout=20, since=since)
            t_tts = event_time(client, "tts-start", since)
            t_eot = last_end_of_turn(client, since, t_tts)
            timeline = [(round(t - since, 2), e["type"]) for t, e in client.events if t >= since]
            print(f"{case}: apology started {(t_tts - t_eot) * 1000:.0f} ms after the end of turn")
            assert done["text"] == APOLOGY_TEXT
            # the hang lasts 60 s; the 2 s target is measured in docs/faults.md (a loaded CPU
            # slows the transcript, and the LLM then still gets its 1 s)
            assert t_tts - t_eot < 20, timeline
            assert client.voiced_between(t_tts), "the apology was not heard"
            assert sample("parley_reply_fallbacks_total", stage=stage, reason=reason) == before + 1
            assert len(warnings_about(caplog, f"{stage} unavailable")) == 1
            assert not errors_logged(caplog)
            # the backend answers again: so does the agent, in the same call
            assert await reply_text(client, "And what is courage?") == "Indeed."
            assert any(f"{stage} is back" in r.getMessage() for r in caplog.records)
    finally:
        await runner.cleanup()


# -- Milvus stopping mid-call ---------------------------------------------------------------


class MilvusProcess:
    """A Milvus Lite gRPC server (`python -m milvus_lite server`) of this test's own, on a fixed
    port and data directory, so it can be stopped and started again with its data."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(self.data_dir),
            "--host", "127.0.0.1", "--port", str(self.port),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)

        async def answering() -> None:
            await asyncio.to_thread(lambda: MilvusClient(self.uri, timeout=2).close())

        assert await until_async(answering, timeout=30, step=0.2), "milvus-lite server did not start"

    async def flush(self) -> None:
        """Persist what the store wrote, as a server does on its own schedule."""
        def flush() -> None:
            client = MilvusClient(self.uri)
            client.flush(COLLECTION)
            client.close()

        await asyncio.to_thread(flush)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()


@pytest.fixture
async def milvus(tmp_path: Path) -> AsyncIterator[MilvusProcess]:
    server = MilvusProcess(tmp_path / "milvus")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def memories_in_last_prompt(fake: FakeOpenAI) -> str:
    return str(fake.requests("chat")[-1].body["messages"][0]["content"])


async def test_milvus_stopping_mid_call(tmp_path: Path, fake: FakeOpenAI, database_url: str,
                                        milvus: MilvusProcess, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    runner, url = await start_server(settings_for(tmp_path, fake, database_url, milvus_uri=milvus.uri))
    try:
        async with CallClient(url, "socrates") as client:
            await reply_text(client, "Remember that my favourite colour is green.")
            await milvus.flush()
            await reply_text(client, "What is my favourite colour?")
            assert "green" in memories_in_last_prompt(fake)  # memory works before the outage
            errors_before = dependency_errors("milvus")
            await milvus.stop()
            for words in ("What is my favourite colour?", "Do you remember my colour?"):
                assert await reply_text(client, words) == "Indeed."  # the reply comes, without memories
                assert "green" not in memories_in_last_prompt(fake)
            assert dependency_errors("milvus") >= errors_before + 2  # every skipped recall counted
            assert len(warnings_about(caplog, "milvus unavailable")) == 1  # logged once per outage
            assert not errors_logged(caplog)
            await milvus.start()  # the same port and data
            for _ in range(5):  # a reconnection is tried at most once a second
                await reply_text(client, "What is my favourite colour?")
                if "green" in memories_in_last_prompt(fake):
                    break
                await asyncio.sleep(0.5)
            assert "green" in memories_in_last_prompt(fake), "memory did not resume"
            assert any("milvus is back" in r.getMessage() for r in caplog.records)
    finally:
        await runner.cleanup()


# -- Postgres stopping mid-call: the turn log waits it out ------------------------------------


async def turn_rows(pg_url: str, session_id: str) -> int:
    conn = await asyncpg.connect(pg_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM turns WHERE session_id = $1::uuid", session_id))
    finally:
        await conn.close()


async def test_turn_log_waits_out_a_postgres_restart(tmp_path: Path, fake: FakeOpenAI,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with world_traversable_dir() as directory:
        pg = await EmbeddedPostgres.start(directory / "pg")
        runner, url = await start_server(settings_for(tmp_path, fake, pg.url))
        try:
            async with CallClient(url, "socrates") as client:
                session = client.session["session_id"]
                await reply_text(client, "Hello there.")
                assert await until_async(lambda: _expect(turn_rows(pg.url, session), 1), timeout=10)
                errors_before = dependency_errors("postgres")
                dropped_before = sample("parley_writes_dropped_total", what="turn log")
                await pg.stop()
                assert await reply_text(client, "What is virtue?") == "Indeed."  # the call goes on
                assert await until(lambda: dependency_errors("postgres") > errors_before, timeout=10)
                pg = await EmbeddedPostgres.start(directory / "pg")  # back, on the same socket
                # the turn said during the outage is logged once Postgres is back
                assert await until_async(lambda: _expect(turn_rows(pg.url, session), 2), timeout=20)
                await reply_text(client, "And courage?")
                assert await until_async(lambda: _expect(turn_rows(pg.url, session), 3), timeout=10)
                assert sample("parley_writes_dropped_total", what="turn log") == dropped_before
            assert len(warnings_about(caplog, "postgres unavailable")) == 1
            assert any("postgres is back" in r.getMessage() for r in caplog.records)
            assert not errors_logged(caplog)
        finally:
            await runner.cleanup()
            await pg.stop()


async def _expect(count: Awaitable[int], wanted: int) -> None:
    """For until_async: raises until ``count`` reaches ``wanted``."""
    got = await count
    if got != wanted:
        raise AssertionError(f"{got} != {wanted}")
