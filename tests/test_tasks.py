"""TaskRegistry: named tasks, failures logged once, cancel-and-wait with a time limit."""

from __future__ import annotations

import asyncio
import logging

import pytest

from pipeline.tasks import TaskRegistry


async def test_a_failure_is_logged_once_with_the_owner_prefix(caplog: pytest.LogCaptureFixture) -> None:
    registry = TaskRegistry("call abcd1234")

    async def fail() -> None:
        raise ValueError("boom")

    with caplog.at_level(logging.ERROR, logger="pipeline.tasks"):
        task = registry.spawn(fail(), "worker")
        assert task is not None and task.get_name() == "call abcd1234 worker"
        await asyncio.wait([task])
        await asyncio.sleep(0)  # done callbacks run on the next loop pass
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].getMessage() == "call abcd1234: task call abcd1234 worker failed"
    assert failures[0].exc_info is not None and isinstance(failures[0].exc_info[1], ValueError)
    assert len(registry) == 0


async def test_cancel_all_waits_and_names_stragglers(caplog: pytest.LogCaptureFixture) -> None:
    registry = TaskRegistry("owner")
    cleaned = asyncio.Event()
    release = asyncio.Event()

    async def polite() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            await asyncio.sleep(0.05)  # cleanup that takes a moment: cancel_all waits for it
            cleaned.set()

    async def stubborn() -> None:
        while not release.is_set():  # swallows cancellation: a bug cancel_all must report
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    registry.spawn(polite(), "polite")
    stuck = registry.spawn(stubborn(), "stubborn")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="pipeline.tasks"):
        stragglers = await registry.cancel_all(timeout=0.3)
    assert cleaned.is_set()
    assert stragglers == ["owner stubborn"]
    assert "owner stubborn" in caplog.text
    release.set()
    assert stuck is not None
    await stuck
    assert await registry.cancel_all(timeout=0.1) == []  # idempotent
    assert len(registry) == 0


async def test_a_closed_registry_starts_nothing() -> None:
    registry = TaskRegistry("owner")
    await registry.cancel_all(timeout=0.1)
    ran = []

    async def work() -> None:
        ran.append(1)

    coro = work()
    assert registry.spawn(coro, "late") is None
    await asyncio.sleep(0)
    assert ran == [] and coro.cr_frame is None  # closed, not left pending


async def test_cancel_all_spares_its_caller() -> None:
    registry = TaskRegistry("owner")
    finished = asyncio.Event()

    async def close_from_inside() -> None:
        await registry.cancel_all(timeout=0.5)
        finished.set()

    other = registry.spawn(asyncio.sleep(60), "other")
    closer = registry.spawn(close_from_inside(), "close")
    assert closer is not None and other is not None
    await asyncio.wait_for(closer, 2)
    assert finished.is_set() and other.cancelled()


async def test_wait_lets_tasks_finish_without_cancelling() -> None:
    registry = TaskRegistry("owner")
    quick = registry.spawn(asyncio.sleep(0.05), "quick")
    slow = registry.spawn(asyncio.sleep(60), "slow")
    pending = await registry.wait(0.3)
    assert quick is not None and quick.done() and not quick.cancelled()
    assert pending == {slow}
    await registry.cancel_all(timeout=1)
