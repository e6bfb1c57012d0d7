"""OpenAI backends against the local fake API server (real HTTP over loopback)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import traceback
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from pipeline import usage
from pipeline.audio import RATE
from pipeline.backends.base import Embedder, GenerationParams, Message
from pipeline.backends.openai_backends import (
    OpenAIEmbedder,
    OpenAILLM,
    OpenAISTT,
    OpenAITTS,
    PcmStream,
)
from pipeline.backends.resilience import BackendError
from tests.fake_openai import SPEECH_RATE, FakeOpenAI, Fault, dead_url, settings_for, speech

KEY = "sk-test-parley-0123456789abcdef"
REPLY = "Hello there. How can I help you today?"
ASK = [Message("system", "You are terse."), Message("user", "hi")]


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(KEY, reply=REPLY) as server:
        yield server


@pytest.fixture
async def make(fake: FakeOpenAI) -> AsyncIterator[Callable[..., Any]]:
    """Build a backend against the fake (or ``base_url``); every one is closed afterwards."""
    async with contextlib.AsyncExitStack() as stack:

        def build(
            cls: type, *, base_url: str | None = None, api_key: str = KEY, **fields: Any
        ) -> Any:
            backend = cls(settings_for(base_url or fake.base_url, api_key, **fields))
            stack.push_async_callback(backend.close)
            return backend

        yield build


def errors(stage: str, kind: str) -> float:
    return (
        REGISTRY.get_sample_value("parley_backend_errors_total", {"stage": stage, "kind": kind})
        or 0.0
    )


async def test_llm_streams_tokens_and_records_reported_usage(
    fake: FakeOpenAI, make: Callable[..., Any]
) -> None:
    llm = make(OpenAILLM, openai_llm_model="tiny-chat")
    with usage.track() as used:
        pieces = [p async for p in llm.stream(ASK, GenerationParams(max_tokens=50))]
    assert len(pieces) > 3 and "".join(pieces) == REPLY
    (request,) = fake.requests("chat")
    assert request.body["model"] == "tiny-chat" and request.body["max_tokens"] == 50
    assert request.body["messages"][1] == {"role": "user", "content": "hi"}
    assert request.body["stream_options"] == {"include_usage": True}
    assert (used.input_tokens, used.output_tokens) == (
        request.usage["prompt_tokens"],
        request.usage["completion_tokens"],
    )


async def test_llm_without_stream_usage_support_estimates_usage(
    fake: FakeOpenAI, make: Callable[..., Any]
) -> None:
    fake.stream_options_supported = False
    llm = make(OpenAILLM)
    with usage.track() as used:
        first = "".join([p async for p in llm.stream(ASK, GenerationParams())])
    second = "".join([p async for p in llm.stream(ASK, GenerationParams())])
    assert first == second == REPLY
    sent = [r.body for r in fake.requests("chat")]
    assert ["stream_options" in body for body in sent] == [True, False, False]  # learned once
    assert used.output_tokens == len(REPLY.split()) and used.input_tokens > 0


async def test_closing_the_llm_stream_closes_the_http_response(
    fake: FakeOpenAI, make: Callable[..., Any]
) -> None:
    fake.token_delay_s = 0.05
    stream = make(OpenAILLM).stream(ASK, GenerationParams())
    assert await anext(stream) == "Hello"
    await stream.aclose()
    (request,) = fake.requests("chat")
    await asyncio.wait_for(request.disconnected.wait(), 2.0)
    assert request.closed_early and not request.finished


async def test_cancelling_the_consumer_task_closes_the_http_response(
    fake: FakeOpenAI, make: Callable[..., Any]
) -> None:
    fake.token_delay_s = 0.05
    llm = make(OpenAILLM)
    got: list[str] = []
    second = asyncio.Event()

    async def consume() -> None:
        async for piece in llm.stream(ASK, GenerationParams()):
            got.append(piece)
            if len(got) == 2:
                second.set()

    task = asyncio.create_task(consume(), name="llm-consumer")
    await asyncio.wait_for(second.wait(), 2.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (request,) = fake.requests("chat")
    await asyncio.wait_for(request.disconnected.wait(), 2.0)
    assert not request.finished and len(got) < len(REPLY.split())


async def test_per_stage_base_url_overrides_the_shared_one(
    fake: FakeOpenAI, make: Callable[..., Any]
) -> None:
    llm = make(OpenAILLM, base_url=dead_url(), openai_llm_base_url=fake.base_url)
    assert "".join([p async for p in llm.stream(ASK, GenerationParams())]) == REPLY


async def test_stt_uploads_16k_wav_and_returns_the_transcript(
    fake: FakeOpenAI, make: Callable[..., Any]
) -> None:
    fake.tell(440.0, "What is virtue?")
    utterance = speech(440.0, 1.2, RATE)
    stt = make(OpenAISTT, openai_stt_model="whisper-x")
    assert await stt.transcribe(utterance, final=False) == ""  # interim: no paid request
    with usage.track() as used:
        assert await stt.transcribe(utterance) == "What is virtue?"
    (request,) = fake.requests("transcriptions")
    assert request.body["model"] == "whisper-x"
    assert request.audio["rate"] == 16000 and request.audio["channels"] == 1
    assert request.audio["seconds"] == pytest.approx(1.2, abs=0.01)
    assert used.stt_seconds == pytest.approx(1.2)


async def test_tts_yields_48k_chunks_while_the_server_is_still_sending(
    fake: FakeOpenAI, make: Callable[..., Any]
) -> None:
    fake.audio_chunk_delay_s = 0.03
    tts = make(OpenAITTS, openai_tts_voice="nova")
    chunks: list[np.ndarray] = []
    with usage.track() as used:
        async for chunk in tts.synthesize("Elementary, my dear Watson.", voice="joe-us"):
            if not chunks:
                assert not fake.requests("speech")[0].finished  # streamed, not buffered
            chunks.append(chunk)
    (request,) = fake.requests("speech")
    assert request.body["voice"] == "nova" and request.body["response_format"] == "pcm"
    assert len(chunks) > 2 and all(c.dtype == np.int16 for c in chunks)
    server_seconds = 4 * 0.35  # the fake speaks 0.35 s per word
    assert sum(c.size for c in chunks) == pytest.approx(server_seconds * RATE, abs=RATE * 0.01)
    assert used.tts_seconds == pytest.approx(server_seconds, abs=0.01)


async def test_tts_then_stt_round_trip(fake: FakeOpenAI, make: Callable[..., Any]) -> None:
    text = "The game is afoot."
    audio = np.concatenate([c async for c in make(OpenAITTS).synthesize(text, voice="alloy")])
    assert fake.requests("speech")[0].body["voice"] == "alloy"
    assert await make(OpenAISTT).transcribe(audio) == text


def test_pcm_stream_resamples_across_odd_chunk_edges() -> None:
    tone = speech(300.0, 0.5, SPEECH_RATE).astype("<i2").tobytes()
    stream = PcmStream(SPEECH_RATE)
    pieces = [stream.push(tone[i : i + 777]) for i in range(0, len(tone), 777)] + [stream.flush()]
    out = np.concatenate(pieces)
    assert out.size == pytest.approx(0.5 * RATE, abs=2)
    expected = speech(300.0, 0.5, RATE).astype(np.float64)
    error = np.abs(out[200:-200].astype(np.float64) - expected[200:-200])  # skip filter edges
    assert error.max() < 0.05 * np.abs(expected).max()


async def test_embeddings_are_normalised_rows_of_the_model_dimension(
    fake: FakeOpenAI, make: Callable[..., Any]
) -> None:
    embedder = make(OpenAIEmbedder)
    assert isinstance(embedder, Embedder) and embedder.dim == 1536
    vectors = await embedder.embed(["the hound of the moors", "a hound on the moors", "tax law"])
    assert vectors.shape == (3, 1536) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    assert (await embedder.embed([])).shape == (0, 1536)
    assert fake.requests("embeddings")[0].body["encoding_format"] == "float"


async def test_embedding_dimension_setting_is_sent_to_text_embedding_3(
    fake: FakeOpenAI, make: Callable[..., Any]
) -> None:
    embedder = make(OpenAIEmbedder, openai_embed_dim=256)
    assert (await embedder.embed(["hello"])).shape == (1, 256)
    assert fake.requests("embeddings")[0].body["dimensions"] == 256


@pytest.mark.parametrize(
    ("status", "kind"), [(400, "status_4xx"), (429, "rate_limited"), (503, "status_5xx")]
)
async def test_http_errors_are_classified_and_counted(
    fake: FakeOpenAI, make: Callable[..., Any], status: int, kind: str
) -> None:
    fake.faults["chat"] = Fault(status=status)
    before = errors("llm", kind)
    with pytest.raises(BackendError) as caught:
        [p async for p in make(OpenAILLM).stream(ASK, GenerationParams())]
    assert (caught.value.kind, caught.value.status) == (kind, status)
    assert errors("llm", kind) == before + 1


async def test_refused_connection_is_a_connect_error(make: Callable[..., Any]) -> None:
    with pytest.raises(BackendError) as caught:
        await make(OpenAISTT, base_url=dead_url()).transcribe(speech(300.0, 0.5, RATE))
    assert caught.value.kind == "connect" and caught.value.retryable


async def test_api_key_never_reaches_logs_or_exceptions(
    fake: FakeOpenAI, make: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    wrong_key = "sk-wrong-key-9876543210zyxwvu"
    caplog.set_level(logging.DEBUG)  # every logger, the SDK's and httpx's included
    good = make(OpenAILLM)
    assert "".join([p async for p in good.stream(ASK, GenerationParams())]) == REPLY
    with pytest.raises(BackendError) as caught:
        [p async for p in make(OpenAILLM, api_key=wrong_key).stream(ASK, GenerationParams())]
    assert [r.authorized for r in fake.requests("chat")] == [True, False]  # both keys were sent
    assert caught.value.status == 401 and "Incorrect API key" in str(caught.value)
    shown = "".join(traceback.format_exception(caught.value)) + repr(caught.value) + caplog.text
    assert KEY not in shown and wrong_key not in shown
    assert "wrong-key" not in shown
