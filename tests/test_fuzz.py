"""A few hundred generated bad inputs on every path: no 5xx, no handler exception, a call after.

``parley bench fuzz`` runs the same generator with 10 000 cases against a server process.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator

import pytest

from bench.fuzz import fuzz, real_call_works
from parley.config import Settings
from tests.conftest import start_server

CASES = 800


@pytest.fixture
async def open_server(settings: Settings) -> AsyncIterator[str]:
    """Rate limits off: the fuzzer is here to reach the handlers, not the limiter."""
    runner, url = await start_server(dataclasses.replace(settings, rate_limit=0, user_rate_limit=0))
    try:
        yield url
    finally:
        await runner.cleanup()


async def test_fuzz_no_5xx_no_exceptions_and_a_call_after(open_server: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    report = await fuzz(open_server, CASES)
    assert report.http_cases + report.ws_cases + report.dc_cases == CASES
    assert report.server_5xx == []
    statuses = {code for counts in report.statuses.values() for code in counts}
    assert statuses <= {200, 201, 204, 400, 401, 403, 404, 405, 413, 415, 429}, statuses
    errors = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
    assert await real_call_works(open_server)
