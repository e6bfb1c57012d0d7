"""Timeouts, connect retries, circuit breaker and fallback, against real local HTTP servers."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import pipeline.agent.fallback  # noqa: F401  # exports the spoken-apology metrics
import pipeline.moderation  # noqa: F401  # exports the moderation metrics
import pipeline.usage  # noqa: F401  # exports the budget and usage metrics
import storage.retry  # noqa: F401  # exports the dropped-writes metric
from parley.config import Settings
from pipeline.audio import RATE
from pipeline.backends.base import GenerationParams, Message
from pipeline.backends.openai_backends import OpenAILLM, OpenAISTT, OpenAITTS
from pipeline.backends.registry import register
from pipeline.backends.resilience import (
    BackendError,
    CircuitBreaker,
    FallbackLLM,
    FallbackSTT,
    FallbackTTS,
    Guard,
    Policy,
    build_stage,
)
from tests.fake_openai import FakeOpenAI, Fault, dead_url, settings_for, speech

KEY = "sk-test-parley-0123456789abcdef"
PRIMARY_REPLY = "From the cloud."
FALLBACK_REPLY = "From the local model."
ASK = [Message("user", "hello")]
FAST = Policy(first_chunk_timeout_s=1.0, idle_timeout_s=0.5, retries=2, backoff_s=0.05)


@pytest.fixture
async def primary() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(KEY, reply=PRIMARY_REPLY) as server:
        yield server


@pytest.fixture
async def local() -> AsyncIterator[FakeOpenAI]:
    """Stands in for the local backend: a second, healthy server."""
    async with FakeOpenAI(KEY, reply=FALLBACK_REPLY) as server:
        yield server


@pytest.fixture
async def make() -> AsyncIterator[Callable[..., Any]]:
    async with contextlib.AsyncExitStack() as stack:

        def build(cls: type, base_url: str) -> Any:
            backend = cls(settings_for(base_url, KEY))
            stack.push_async_callback(backend.close)
            return backend

        yield build


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def gauge(stage: str) -> float | None:
    return REGISTRY.get_sample_value("parley_circuit_state", {"stage": stage})


async def text(llm: Any) -> str:
    return "".join([p async for p in llm.stream(ASK, GenerationParams())])


def test_breaker_opens_after_consecutive_failures_then_half_opens_for_one_probe() -> None:
    clock = Clock()
    breaker = CircuitBreaker("unit", failures=3, cooldown_s=10.0, clock=clock)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # not consecutive any more
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.allow() and breaker.state == "closed" and gauge("unit") == 0
    breaker.record_failure()
    assert breaker.state == "open" and not breaker.allow() and gauge("unit") == 2
    clock.now += 9.9
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.allow() and breaker.state == "half_open" and gauge("unit") == 1
    assert not breaker.allow()  # one probe at a time
    breaker.record_failure()  # the probe failed: another full cool-down
    assert breaker.state == "open" and not breaker.allow()
    clock.now += 10.0
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed" and breaker.allow() and gauge("unit") == 0


def test_abandoned_probe_frees_the_half_open_slot() -> None:
    clock = Clock()
    breaker = CircuitBreaker("unit", failures=1, cooldown_s=1.0, clock=clock)
    breaker.record_failure()
    clock.now += 1.0
    assert breaker.allow() and not breaker.allow()
    breaker.record_abandoned()  # barge-in cancelled the probe before it answered
    assert breaker.state == "half_open" and breaker.allow()


async def test_connect_errors_are_retried(primary: FakeOpenAI, make: Callable[..., Any]) -> None:
    primary.faults["chat"] = Fault(drop=True, times=2)
    llm = FallbackLLM(make(OpenAILLM, primary.base_url), None, Guard("llm", FAST))
    assert await text(llm) == PRIMARY_REPLY
    assert len(primary.requests("chat")) == 3


@pytest.mark.parametrize(("status", "kind"), [(400, "status_4xx"), (500, "status_5xx")])
async def test_http_errors_are_not_retried(
    primary: FakeOpenAI, make: Callable[..., Any], status: int, kind: str
) -> None:
    primary.faults["chat"] = Fault(status=status)
    llm = FallbackLLM(make(OpenAILLM, primary.base_url), None, Guard("llm", FAST))
    with pytest.raises(BackendError) as caught:
        await text(llm)
    assert caught.value.kind == kind and len(primary.requests("chat")) == 1


async def test_no_retry_once_a_token_was_streamed(
    primary: FakeOpenAI, make: Callable[..., Any]
) -> None:
    primary.faults["chat"] = Fault(drop_after=3)  # role chunk + two words, then the line dies
    llm = FallbackLLM(make(OpenAILLM, primary.base_url), None, Guard("llm", FAST))
    got: list[str] = []
    with pytest.raises(BackendError) as caught:
        async for piece in llm.stream(ASK, GenerationParams()):
            got.append(piece)
    assert got == ["From", " the"] and caught.value.kind == "connect"
    assert len(primary.requests("chat")) == 1


async def test_a_stall_after_the_first_token_is_a_timeout_not_a_fallback(
    primary: FakeOpenAI, local: FakeOpenAI, make: Callable[..., Any]
) -> None:
    primary.faults["chat"] = Fault(stall_after=2, stall_s=30.0)
    guard = Guard("llm", FAST)
    llm = FallbackLLM(make(OpenAILLM, primary.base_url), make(OpenAILLM, local.base_url), guard)
    got: list[str] = []
    with pytest.raises(BackendError) as caught:
        async for piece in llm.stream(ASK, GenerationParams()):
            got.append(piece)
    assert got == ["From"] and caught.value.kind == "timeout"
    assert not local.requests("chat")  # the caller already heard the primary's words
    await asyncio.wait_for(primary.requests("chat")[0].disconnected.wait(), 2.0)


async def test_refused_connection_falls_back_within_two_seconds(
    local: FakeOpenAI, make: Callable[..., Any]
) -> None:
    before = REGISTRY.get_sample_value(
        "parley_backend_fallbacks_total", {"stage": "llm", "kind": "connect"}
    )
    llm = FallbackLLM(
        make(OpenAILLM, dead_url()), make(OpenAILLM, local.base_url), Guard("llm", FAST)
    )
    started = time.monotonic()
    assert await text(llm) == FALLBACK_REPLY
    assert time.monotonic() - started < 2.0
    after = REGISTRY.get_sample_value(
        "parley_backend_fallbacks_total", {"stage": "llm", "kind": "connect"}
    )
    assert after == (before or 0.0) + 1


async def test_stalled_server_falls_back_within_two_seconds_and_is_hung_up_on(
    primary: FakeOpenAI, local: FakeOpenAI, make: Callable[..., Any]
) -> None:
    primary.faults["chat"] = Fault(delay_s=30.0)
    llm = FallbackLLM(
        make(OpenAILLM, primary.base_url), make(OpenAILLM, local.base_url), Guard("llm", FAST)
    )
    started = time.monotonic()
    stream = llm.stream(ASK, GenerationParams())
    assert await anext(stream) == "From"
    assert time.monotonic() - started < 2.0
    assert "".join([p async for p in stream]) == " the local model."
    await asyncio.wait_for(primary.requests("chat")[0].disconnected.wait(), 2.0)


@pytest.mark.parametrize("primary_up", [True, False])
async def test_closing_a_guarded_stream_closes_the_backend_stream_in_use(
    primary: FakeOpenAI, local: FakeOpenAI, make: Callable[..., Any], primary_up: bool
) -> None:
    primary.reply = local.reply = "one two three four five six seven eight"
    primary.token_delay_s = local.token_delay_s = 0.05
    first_url = primary.base_url if primary_up else dead_url()
    llm = FallbackLLM(
        make(OpenAILLM, first_url), make(OpenAILLM, local.base_url), Guard("llm", FAST)
    )
    stream = llm.stream(ASK, GenerationParams())
    assert await anext(stream) == "one"
    await stream.aclose()  # barge-in
    (request,) = (primary if primary_up else local).requests("chat")
    await asyncio.wait_for(request.disconnected.wait(), 2.0)
    assert not request.finished


async def test_tts_falls_back_when_the_primary_has_no_audio_in_time(
    primary: FakeOpenAI, local: FakeOpenAI, make: Callable[..., Any]
) -> None:
    primary.faults["speech"] = Fault(delay_s=30.0)
    tts = FallbackTTS(
        make(OpenAITTS, primary.base_url), make(OpenAITTS, local.base_url), Guard("tts", FAST)
    )
    started = time.monotonic()
    chunks = [c async for c in tts.synthesize("Once upon a time.")]
    assert time.monotonic() - started < 2.0
    assert sum(c.size for c in chunks) > 0.5 * RATE and len(local.requests("speech")) == 1


async def test_stt_falls_back_when_the_primary_is_down(
    local: FakeOpenAI, make: Callable[..., Any]
) -> None:
    local.tell(500.0, "to be or not to be")
    stt = FallbackSTT(
        make(OpenAISTT, dead_url()), make(OpenAISTT, local.base_url), Guard("stt", FAST)
    )
    assert await stt.transcribe(speech(500.0, 1.0, RATE)) == "to be or not to be"


async def test_open_circuit_skips_the_primary_until_the_cool_down(
    primary: FakeOpenAI, local: FakeOpenAI, make: Callable[..., Any]
) -> None:
    clock = Clock()
    guard = Guard("llm", FAST, CircuitBreaker("llm", failures=2, cooldown_s=30.0, clock=clock))
    llm = FallbackLLM(make(OpenAILLM, primary.base_url), make(OpenAILLM, local.base_url), guard)
    primary.faults["chat"] = Fault(status=503)
    assert [await text(llm) for _ in range(3)] == [FALLBACK_REPLY] * 3
    assert len(primary.requests("chat")) == 2  # the third turn did not wait on a dead backend
    assert guard.breaker.state == "open" and gauge("llm") == 2
    del primary.faults["chat"]
    clock.now += 30.0
    assert await text(llm) == PRIMARY_REPLY  # the half-open probe
    assert guard.breaker.state == "closed" and len(primary.requests("chat")) == 3


async def test_without_a_fallback_the_error_reaches_the_caller_quickly(
    make: Callable[..., Any],
) -> None:
    llm = FallbackLLM(make(OpenAILLM, dead_url()), None, Guard("llm", FAST))
    started = time.monotonic()
    with pytest.raises(BackendError) as caught:
        await text(llm)
    assert caught.value.kind == "connect" and time.monotonic() - started < 2.0


async def test_build_stage_wraps_the_remote_backend_with_the_configured_fallback(
    local: FakeOpenAI, make: Callable[..., Any]
) -> None:
    cloud, on_box = make(OpenAILLM, dead_url()), make(OpenAILLM, local.base_url)
    register("llm", "test-cloud")(lambda settings: cloud)
    register("llm", "test-local")(lambda settings: on_box)
    settings = Settings(llm="test-cloud")
    settings.fallback = "test-local"  # type: ignore[attr-defined]  # PARLEY_FALLBACK, not declared yet
    llm = build_stage("llm", settings)
    assert isinstance(llm, FallbackLLM) and (llm.primary, llm.fallback) == (cloud, on_box)
    assert await text(llm) == FALLBACK_REPLY
    assert build_stage("llm", settings) is llm  # one breaker per process, not per call


async def test_guard_call_applies_the_deadline_to_request_response_calls() -> None:
    async def never() -> str:
        await asyncio.Event().wait()
        return "unreachable"

    async def spare() -> str:
        return "spare"

    guard = Guard("unit", Policy(first_chunk_timeout_s=0.2), CircuitBreaker("unit", failures=2))
    assert await guard.call(never, spare) == "spare"
    with pytest.raises(BackendError) as caught:
        await guard.call(never)
    assert caught.value.kind == "timeout" and guard.breaker.state == "open"


def test_alert_rules_only_use_metrics_parley_exports() -> None:
    rules_file = Path(__file__).parent.parent / "infra" / "prometheus" / "alerts.yml"
    rules = [r for g in yaml.safe_load(rules_file.read_text())["groups"] for r in g["rules"]]
    used = {m for r in rules for m in re.findall(r"\bparley_[a-z_]+", r["expr"])}
    import parley.metrics  # noqa: F401  (registers the shared families, whatever ran before)

    families = list(REGISTRY.collect())  # labelled families have no samples yet: name them
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}
    exported = {m.name + suffix for m in families for suffix in suffixes.get(m.type, ("",))}
    assert used and used <= exported, used - exported
