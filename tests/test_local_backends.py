"""The local model backends, with the real bundled models and speech made at test time."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable, Generator

import numpy as np
import pytest

from parley.config import Settings
from personas import get_persona
from pipeline.audio import RATE, rms_dbfs
from pipeline.backends import registry
from pipeline.backends._local import ModelWorker
from pipeline.backends.base import GenerationParams, Message
from pipeline.backends.local_llm import LlamaLLM
from pipeline.backends.local_stt import WhisperSTT
from pipeline.backends.local_tts import PiperTTS
from pipeline.chunker import SentenceChunker
from pipeline.prompt import build_messages, generation_params

pytestmark = pytest.mark.models

SETTINGS = Settings(stt="local", llm="local", tts="local")
THREE_SENTENCES = "The first sentence is here. The second one follows it. And this is the third."


@pytest.fixture(scope="module")
def stt() -> WhisperSTT:
    backend = registry.get("stt", "local", SETTINGS)
    assert isinstance(backend, WhisperSTT)
    return backend


@pytest.fixture(scope="module")
def llm() -> LlamaLLM:
    backend = registry.get("llm", "local", SETTINGS)
    assert isinstance(backend, LlamaLLM)
    return backend


@pytest.fixture(scope="module")
def tts() -> PiperTTS:
    backend = registry.get("tts", "local", SETTINGS)
    assert isinstance(backend, PiperTTS)
    return backend


def word_list(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def recall(expected: str, heard: str) -> float:
    """Share of the expected words that were heard."""
    wanted, got = word_list(expected), set(word_list(heard))
    return sum(w in got for w in wanted) / len(wanted)


async def speak(tts: PiperTTS, text: str, **kwargs: object) -> np.ndarray:
    return np.concatenate([chunk async for chunk in tts.synthesize(text, **kwargs)])  # type: ignore[arg-type]


def socrates_messages(llm: LlamaLLM, question: str) -> list[Message]:
    persona = get_persona("socrates")
    return build_messages(persona, [], question, budget_tokens=1500, count_tokens=llm.count_tokens)


# --- the model thread ------------------------------------------------------------------


async def test_closing_a_stream_stops_and_closes_its_producer() -> None:
    state = {"made": 0, "closed": False}

    def endless() -> Generator[int, None, None]:
        try:
            while True:
                state["made"] += 1
                yield state["made"]
        finally:
            state["closed"] = True

    stream = ModelWorker("test").stream(endless, ahead=4)
    assert [await anext(stream) for _ in range(3)] == [1, 2, 3]
    await stream.aclose()
    assert state["closed"]  # the thread has let go before aclose() returned
    assert state["made"] <= 3 + 4 + 1


async def test_producer_errors_reach_the_consumer() -> None:
    def failing() -> Generator[str, None, None]:
        yield "one"
        raise RuntimeError("model exploded")

    stream = ModelWorker("test").stream(failing, ahead=4)
    assert await anext(stream) == "one"
    with pytest.raises(RuntimeError, match="exploded"):
        await anext(stream)


async def test_a_queued_stream_that_is_abandoned_never_runs() -> None:
    worker = ModelWorker("test")
    release = threading.Event()
    ran: list[str] = []

    def blocking() -> Generator[str, None, None]:
        yield "first"
        release.wait()

    def queued() -> Generator[str, None, None]:
        ran.append("queued")
        yield "never"

    async def first_of_queued() -> str:
        return await anext(worker.stream(queued, ahead=4))

    first = worker.stream(blocking, ahead=4)
    assert await anext(first) == "first"
    waiting = asyncio.create_task(first_of_queued(), name="test-queued")
    await asyncio.sleep(0)  # let the second stream submit its job behind the first
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    release.set()
    assert [item async for item in first] == []
    assert await worker.run(len, "ok") == 2  # the worker is free again
    assert ran == []


# --- STT -------------------------------------------------------------------------------


async def test_tts_speech_is_transcribed_back(tts: PiperTTS, stt: WhisperSTT) -> None:
    sentence = "The weather is lovely today, so we will walk to the old harbour."
    heard = await stt.transcribe(await speak(tts, sentence), final=True)
    assert recall(sentence, heard) >= 0.8, heard


async def test_espeak_speech_interim_and_final(
    stt: WhisperSTT, speech: Callable[[str], np.ndarray]
) -> None:
    sentence = "Please tell me a story about a brave little fox."
    pcm = speech(sentence)
    final = await stt.transcribe(pcm, final=True)
    interim = await stt.transcribe(pcm[: pcm.size // 2], final=False)
    assert recall(sentence, final) >= 0.8, final
    assert set(word_list(interim)) & {"please", "tell", "me", "a", "story"}, interim


async def test_short_real_answer_is_kept(
    stt: WhisperSTT, speech: Callable[[str], np.ndarray]
) -> None:
    assert "okay" in word_list(await stt.transcribe(speech("Okay."), final=True))


@pytest.mark.parametrize("level", [0.0, 0.003, 0.02])
async def test_silence_and_noise_give_no_text(stt: WhisperSTT, level: float) -> None:
    noise = np.random.default_rng(7).normal(0.0, level * 32768, 2 * RATE)
    assert await stt.transcribe(noise.astype(np.int16), final=True) == ""


async def test_stt_calls_from_many_tasks_all_complete(
    stt: WhisperSTT, speech: Callable[[str], np.ndarray]
) -> None:
    pcm = speech("Good morning to you.")
    results = await asyncio.gather(*(stt.transcribe(pcm, final=f) for f in (True, False, True)))
    assert all("morning" in word_list(text) for text in results), results


# --- LLM -------------------------------------------------------------------------------


async def test_llm_streams_a_reply_for_socrates(llm: LlamaLLM) -> None:
    persona = get_persona("socrates")
    pieces = [
        piece
        async for piece in llm.stream(
            socrates_messages(llm, "What is courage?"), generation_params(persona)
        )
    ]
    assert pieces
    assert word_list("".join(pieces))


async def test_llm_stops_at_max_tokens(llm: LlamaLLM) -> None:
    messages = socrates_messages(llm, "Explain in detail everything you know about virtue.")
    pieces = [p async for p in llm.stream(messages, GenerationParams(max_tokens=6))]
    assert 1 <= len(pieces) <= 6  # every piece is at most one token


async def test_llm_close_midway_frees_the_model_for_the_next_request(llm: LlamaLLM) -> None:
    messages = socrates_messages(llm, "Tell me a very long story about Athens.")
    first = llm.stream(messages, GenerationParams(max_tokens=1000))
    assert await anext(first)
    await first.aclose()
    with pytest.raises(StopAsyncIteration):
        await anext(first)
    second = [p async for p in llm.stream(messages, GenerationParams(max_tokens=5))]
    assert second


async def test_llm_cancelled_consumer_frees_the_model(llm: LlamaLLM) -> None:
    messages = socrates_messages(llm, "Describe the agora, slowly.")
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in llm.stream(messages, GenerationParams(max_tokens=1000)):
            started.set()

    task = asyncio.create_task(consume(), name="test-llm-consumer")
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [p async for p in llm.stream(messages, GenerationParams(max_tokens=5))]


def test_count_tokens_uses_the_model_tokenizer(llm: LlamaLLM) -> None:
    assert llm.count_tokens("") == 0
    short, long = llm.count_tokens("Hello there."), llm.count_tokens("Hello there. " * 20)
    assert 0 < short < long
    assert long != len("Hello there. " * 20) // 4  # not the character estimate


# --- TTS -------------------------------------------------------------------------------


async def test_tts_yields_48k_int16_speech(tts: PiperTTS) -> None:
    chunks = [chunk async for chunk in tts.synthesize(THREE_SENTENCES)]
    assert len(chunks) >= 3  # one per sentence (plus the resampler's tail)
    audio = np.concatenate(chunks)
    assert all(c.dtype == np.int16 and c.ndim == 1 for c in chunks)
    assert 2.0 < audio.size / RATE < 10.0
    assert rms_dbfs(audio) > -35.0


async def test_tts_speed_changes_the_pace(tts: PiperTTS) -> None:
    slow = await speak(tts, "A sentence spoken at two different speeds.", speed=0.8)
    fast = await speak(tts, "A sentence spoken at two different speeds.", speed=1.25)
    assert fast.size < 0.85 * slow.size


async def test_tts_close_after_first_chunk_stops_and_next_call_works(tts: PiperTTS) -> None:
    stream = tts.synthesize(THREE_SENTENCES)
    assert (await anext(stream)).size > 0
    await stream.aclose()
    with pytest.raises(StopAsyncIteration):
        await anext(stream)
    assert (await speak(tts, "Still working.")).size > 0


async def test_tts_voice_names(tts: PiperTTS) -> None:
    assert (await speak(tts, "Hi.", voice="joe")).size > 0
    with pytest.raises(ValueError, match="joe"):
        tts.synthesize("Hi.", voice="nobody")


# --- together --------------------------------------------------------------------------


async def test_persona_reply_is_chunked_and_spoken(llm: LlamaLLM, tts: PiperTTS) -> None:
    persona = get_persona("holmes")
    messages = build_messages(
        persona, [], "I lost my keys.", budget_tokens=1500, count_tokens=llm.count_tokens
    )
    chunker = SentenceChunker()
    pieces: list[str] = []
    async for token in llm.stream(messages, generation_params(persona)):
        pieces += chunker.push(token)
    pieces += chunker.flush()
    assert pieces
    assert not any(mark in "".join(pieces) for mark in "*#`")
    assert (await speak(tts, pieces[0], voice=persona.voice)).size > 0
