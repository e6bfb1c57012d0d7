"""Background writes against a real Postgres: a refused connection is retried then dropped
(counted, logged once), another failure is not retried, and a write that succeeds lands."""

from __future__ import annotations

import logging

import asyncpg
import pytest
from prometheus_client import REGISTRY

from bench.serverproc import free_port
from parley import deps
from storage.retry import write_with_retry


def dropped(what: str) -> float:
    return REGISTRY.get_sample_value("parley_writes_dropped_total", {"what": what}) or 0.0


@pytest.fixture(autouse=True)
def no_outage_yet() -> None:
    deps.reset()


async def test_a_refused_write_is_retried_then_dropped_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    attempts = 0
    dead = f"postgresql://parley@127.0.0.1:{free_port()}/parley"  # nothing listens there

    async def write() -> None:
        nonlocal attempts
        attempts += 1
        await asyncpg.connect(dead, timeout=2)

    before = dropped("test refused")
    assert not await write_with_retry("test refused", write, context="call 1", retry_for_s=1.0)
    assert attempts >= 3  # 0.2 s, 0.4 s… backoff within the second
    assert dropped("test refused") == before + 1
    outage = [r for r in caplog.records if "postgres unavailable" in r.getMessage()]
    assert len(outage) == 1 and outage[0].levelno == logging.WARNING and "call 1" in outage[0].getMessage()


async def test_a_bad_write_is_not_retried(database_url: str, caplog: pytest.LogCaptureFixture) -> None:
    attempts = 0
    conn = await asyncpg.connect(database_url)
    try:
        async def write() -> None:
            nonlocal attempts
            attempts += 1
            await conn.execute("INSERT INTO no_such_table VALUES (1)")

        assert not await write_with_retry("test bad", write, context="call 2")
        assert attempts == 1
        assert [r.levelno for r in caplog.records if "test bad write failed" in r.getMessage()] == [logging.ERROR]

        await conn.execute("CREATE TABLE t (x int)")
        assert await write_with_retry("test good", lambda: conn.execute("INSERT INTO t VALUES (1)"))
        assert await conn.fetchval("SELECT count(*) FROM t") == 1
    finally:
        await conn.close()
