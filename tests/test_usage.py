"""Usage accounting and daily budgets (in process, and in a real local redis-server)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis
from prometheus_client import REGISTRY

from bench.serverproc import free_port
from pipeline import usage
from pipeline.usage import Budget, MemoryStore, RedisStore, Usage, budget_notice


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def budget() -> AsyncIterator[Budget]:
    b = Budget(daily_tokens=100, user_daily_tokens=60)
    yield b
    await b.close()


async def test_tracking_nests_and_follows_tasks() -> None:
    before = sample("parley_llm_tokens_total", direction="output")
    with usage.track() as call:
        with usage.track() as turn:
            usage.record_tokens(10, 5)
            await asyncio.create_task(_speak(), name="tts")  # tasks inherit the context
        usage.record_tokens(1, 1)
    usage.record_tokens(100, 100)  # outside any call: only the counters move
    assert (turn.input_tokens, turn.output_tokens, turn.tts_seconds) == (10, 5, 1.5)
    assert (call.input_tokens, call.output_tokens, call.total_tokens) == (11, 6, 17)
    assert sample("parley_llm_tokens_total", direction="output") == before + 106


async def _speak() -> None:
    usage.record_audio("tts", 1.5)


async def test_deployment_budget_runs_out_for_everyone(budget: Budget) -> None:
    denied = sample("parley_budget_denied_total", scope="deployment")
    await budget.charge("ann", Usage(input_tokens=40, output_tokens=15))
    assert await budget.check("ann")
    await budget.charge("bob", Usage(input_tokens=30, output_tokens=20))
    assert not await budget.check("ann") and not await budget.check("cyd")
    assert await budget.spent("ann") == (105, 55)
    assert sample("parley_budget_used_ratio") == pytest.approx(1.05)
    assert sample("parley_budget_denied_total", scope="deployment") == denied + 2
    assert "tomorrow" in budget_notice()


async def test_user_budget_only_stops_that_user(budget: Budget) -> None:
    await budget.charge("ann", Usage(input_tokens=50, output_tokens=10))
    assert not await budget.check("ann")
    assert await budget.check("bob")


async def test_zero_means_unlimited_but_usage_is_still_counted() -> None:
    budget = Budget()
    await budget.charge("ann", Usage(input_tokens=10**9))
    assert await budget.check("ann") and await budget.spent("ann") == (10**9, 10**9)


async def test_a_new_utc_day_starts_from_zero() -> None:
    day = ["20250101"]
    budget = Budget(daily_tokens=10, today=lambda: day[0])
    await budget.charge("ann", Usage(output_tokens=10))
    assert not await budget.check("ann")
    day[0] = "20250102"
    assert await budget.check("ann")


async def test_memory_store_forgets_expired_counters() -> None:
    now = [0.0]
    store = MemoryStore(clock=lambda: now[0])
    assert await store.incr("k", 5, ttl_s=10) == 5 and await store.incr("k", 2, ttl_s=10) == 7
    now[0] = 10.0
    assert await store.get("k") == 0 and await store.incr("k", 1, ttl_s=10) == 1


async def test_redis_budget_is_shared_between_nodes(redis_url: str) -> None:
    node_a = Budget(daily_tokens=100, store=RedisStore(redis_url), today=lambda: "20250101")
    node_b = Budget(daily_tokens=100, store=RedisStore(redis_url), today=lambda: "20250101")
    try:
        await node_a.charge("ann", Usage(input_tokens=70))
        assert await node_b.check("bob")
        await node_b.charge("bob", Usage(output_tokens=30))
        assert not await node_a.check("ann")
        assert await node_a.spent("bob") == (100, 30)
        client = redis.Redis.from_url(redis_url)
        ttl = await client.ttl("parley:tokens:20250101:all")
        await client.aclose()
        assert 0 < ttl <= 2 * 86400
    finally:
        await node_a.close()
        await node_b.close()


async def test_an_unreachable_store_does_not_mute_the_agent() -> None:
    budget = Budget(daily_tokens=10, store=RedisStore(f"redis://127.0.0.1:{free_port()}/0"))
    try:
        await budget.charge("ann", Usage(input_tokens=50))  # logged, not raised
        assert await budget.check("ann")
    finally:
        await budget.close()
