"""Stage backends on the OpenAI API or any OpenAI-compatible server (vLLM, Ollama, llama.cpp).

Every stage talks through its own ``openai.AsyncOpenAI`` client, so each can point at a
different server (``PARLEY_OPENAI_<STAGE>_BASE_URL``, else ``OPENAI_BASE_URL``) with its
own model name. The SDK's own retries are switched off (``max_retries=0``): its backoff
would blow the 2 s first-chunk deadline, and :mod:`pipeline.backends.resilience` decides what is
worth retrying.

Key hygiene: the API key is only ever handed to the SDK. Errors leave this module as
:class:`~pipeline.backends.resilience.BackendError` with the SDK exception dropped (``from None``)
and the server's message redacted, because servers echo keys back ("Incorrect API key
provided: sk-…").

Settings are read with ``getattr(settings, name, default)`` so this module works before
they are declared in :class:`parley.config.Settings`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from collections.abc import AsyncGenerator, Iterator, Sequence
from typing import Any, cast

import numpy as np
import openai

from parley.config import Settings
from pipeline.audio import RATE, resample, write_wav
from pipeline.backends.base import LLM, STT, TTS, Embedder, GenerationParams, Message, Vocabulary
from pipeline.backends.registry import all_settings, register
from pipeline.backends.resilience import (
    CLIENT_ERROR,
    CONFIG,
    CONNECT,
    PROTOCOL,
    RATE_LIMITED,
    SERVER_ERROR,
    TIMEOUT,
    BackendError,
    backend_failure,
)
from pipeline.dsp.resample import FrameResampler, join
from pipeline.usage import record_audio, record_tokens

logger = logging.getLogger(__name__)

STT_RATE = 16000  # what Whisper-family models resample to anyway; a third of the upload
PCM_RATE = 24000  # OpenAI's "pcm" speech format: 24 kHz s16le mono
OPENAI_VOICES = frozenset(
    "alloy ash ballad coral echo fable onyx nova sage shimmer verse marin cedar".split()
)
_EMBED_DIMS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
_SECRET_PATTERNS = re.compile(r"\b(?:sk|rk|pk)-[\w*.-]{6,}|Bearer\s+\S+", re.IGNORECASE)
_MAX_DETAIL = 200


def _redact(text: str, secret: str) -> str:
    """``text`` without the key or anything shaped like one, cut to a log-friendly length."""
    if secret:
        text = text.replace(secret, "[redacted]")
    return _SECRET_PATTERNS.sub("[redacted]", text)[:_MAX_DETAIL]


def _server_message(exc: openai.OpenAIError) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return cast(str, body["message"])
    return str(exc)


class _Api:
    """One stage's client and model; turns SDK errors into redacted BackendErrors."""

    def __init__(self, settings: Settings, stage: str, default_model: str) -> None:
        self.stage = stage
        self.model = str(getattr(settings, f"openai_{stage}_model", "") or default_model)
        base_url = getattr(settings, f"openai_{stage}_base_url", "") or settings.openai_base_url
        key = str(getattr(settings, "openai_api_key", "") or os.environ.get("OPENAI_API_KEY", ""))
        if not key and not base_url:
            raise backend_failure(stage, CONFIG, "OPENAI_API_KEY is not set")
        self._secret = key
        timeout = float(getattr(settings, "stage_timeout_s", 10.0))
        self.client = openai.AsyncOpenAI(
            api_key=key or "no-key",  # local servers ignore it, the SDK insists on one
            base_url=base_url or None,
            max_retries=0,
            timeout=openai.Timeout(timeout, connect=min(timeout, 2.0)),
        )
        logger.info(
            "%s: openai backend, model %s at %s", stage, self.model, self.client.base_url.host
        )

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Translate SDK exceptions raised inside the block."""
        try:
            yield
        except openai.OpenAIError as exc:
            raise self._failure(exc) from None

    def _failure(self, exc: openai.OpenAIError) -> BackendError:
        status = None
        if isinstance(exc, openai.APITimeoutError):
            kind = TIMEOUT
        elif isinstance(exc, openai.APIConnectionError):
            kind = CONNECT
        elif isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            kind = (
                RATE_LIMITED if status == 429 else SERVER_ERROR if status >= 500 else CLIENT_ERROR
            )
        else:
            kind = PROTOCOL
        detail = _redact(_server_message(exc), self._secret)
        return backend_failure(self.stage, kind, detail, status=status)


class _Remote:
    """What every OpenAI stage has: its API handle, and a way to release its connections."""

    api: _Api

    async def close(self) -> None:
        await self.api.client.close()


@register("llm", "openai", key=all_settings)
class OpenAILLM(_Remote, LLM):
    """Streaming chat completions; closing the stream closes the HTTP response (barge-in)."""

    name = "openai"

    def __init__(self, settings: Settings) -> None:
        self.api = _Api(settings, "llm", "gpt-4o-mini")
        self._usage_in_stream = True  # cleared once if the server rejects stream_options

    async def stream(
        self, messages: list[Message], params: GenerationParams
    ) -> AsyncGenerator[str, None]:
        with self.api.errors():
            chunks = await self._open(messages, params)
        reported, produced = False, 0
        try:
            async with chunks:
                with self.api.errors():
                    async for chunk in chunks:
                        if chunk.usage is not None:
                            record_tokens(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
                            reported = True
                        piece = chunk.choices[0].delta.content if chunk.choices else None
                        if piece:
                            produced += 1
                            yield piece
        finally:
            if not reported:  # no usage report (cancelled, or not supported): estimate it
                record_tokens(sum(self.count_tokens(m.content) for m in messages), produced)

    async def _open(self, messages: list[Message], params: GenerationParams) -> Any:
        if self._usage_in_stream:
            try:
                return await self._request(messages, params, include_usage=True)
            except openai.BadRequestError as exc:
                if "stream_options" not in str(exc):
                    raise
                self._usage_in_stream = False
                logger.info("llm: server rejects stream_options; token usage is estimated")
        return await self._request(messages, params, include_usage=False)

    async def _request(
        self, messages: list[Message], params: GenerationParams, *, include_usage: bool
    ) -> Any:
        return await self.api.client.chat.completions.create(
            model=self.api.model,
            messages=cast(Any, [{"role": m.role, "content": m.content} for m in messages]),
            stream=True,
            stream_options={"include_usage": True} if include_usage else openai.omit,
            temperature=params.temperature,
            max_tokens=params.max_tokens,
            stop=params.stop or openai.omit,
        )


def _wav_bytes(pcm: np.ndarray, rate: int) -> bytes:
    """A mono 16-bit WAV file in memory (the transcription endpoint wants a file)."""
    buffer = io.BytesIO()
    write_wav(buffer, pcm, rate)
    return buffer.getvalue()


@register("stt", "openai", key=all_settings)
class OpenAISTT(_Remote, STT):
    """Transcribes whole utterances (the endpoint is request/response, not streaming).

    Interim requests (``final=False``) return "" without calling the API: each would be a
    full paid request every few hundred ms, and only the final transcript drives the turn.
    """

    name = "openai"

    def __init__(self, settings: Settings) -> None:
        self.api = _Api(settings, "stt", "gpt-4o-mini-transcribe")

    async def transcribe(self, pcm: np.ndarray, *, final: bool = True,
                         vocabulary: Vocabulary | None = None) -> str:
        """``vocabulary`` is not sent: the API's ``prompt`` is untested here (no cloud access)."""
        if not final or pcm.size == 0:
            return ""
        upload = _wav_bytes(resample(pcm, RATE, STT_RATE), STT_RATE)  # a few ms of CPU
        with self.api.errors():
            result = await self.api.client.audio.transcriptions.create(
                model=self.api.model,
                file=("utterance.wav", upload, "audio/wav"),
                response_format="json",
            )
        record_audio("stt", pcm.size / RATE)
        return result.text.strip()


class PcmStream:
    """s16le mono bytes at ``rate`` in, 48 kHz int16 chunks out, as the bytes arrive.

    One resampler for the whole utterance keeps filter state across network chunks (a fresh
    one per chunk would click at every edge), and an odd trailing byte waits for its pair.
    """

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.samples_out = 0
        self._carry = b""
        self._converter = FrameResampler(frame_samples=None)

    def push(self, data: bytes) -> np.ndarray:
        data = self._carry + data
        usable = len(data) - len(data) % 2
        self._carry = data[usable:]
        if not usable:
            return np.zeros(0, dtype=np.int16)
        return self._count(join(self._converter.push_pcm(np.frombuffer(data[:usable], dtype="<i2"), self.rate)))

    def flush(self) -> np.ndarray:
        return self._count(join(self._converter.flush()))

    def _count(self, out: np.ndarray) -> np.ndarray:
        self.samples_out += out.size
        return out


@register("tts", "openai", key=all_settings)
class OpenAITTS(_Remote, TTS):
    """``audio.speech`` as raw PCM, streamed and resampled chunk by chunk."""

    name = "openai"

    def __init__(self, settings: Settings) -> None:
        self.api = _Api(settings, "tts", "gpt-4o-mini-tts")
        self.voice = str(getattr(settings, "openai_tts_voice", "") or "alloy")

    async def synthesize(
        self, text: str, *, voice: str | None = None, speed: float = 1.0
    ) -> AsyncGenerator[np.ndarray, None]:
        if not text.strip():
            return
        pcm = PcmStream(PCM_RATE)
        voice = voice if voice in OPENAI_VOICES else self.voice  # persona voices name local ones
        try:
            with self.api.errors():
                async with self.api.client.audio.speech.with_streaming_response.create(
                    model=self.api.model,
                    voice=voice,
                    input=text,
                    response_format="pcm",
                    speed=min(4.0, max(0.25, speed)) if speed != 1.0 else openai.omit,
                ) as response:
                    async for data in response.iter_bytes():
                        chunk = pcm.push(data)
                        if chunk.size:
                            yield chunk
            tail = pcm.flush()
            if tail.size:
                yield tail
        finally:
            record_audio("tts", pcm.samples_out / RATE)


@register("embed", "openai", key=all_settings)
class OpenAIEmbedder(_Remote, Embedder):
    """Embeddings as L2-normalised float32 rows, like the local MiniLM embedder.

    ``dim`` is known up front for OpenAI's models (or ``PARLEY_OPENAI_EMBED_DIM``, which
    is also sent as ``dimensions`` to text-embedding-3 models); for other servers' models it
    is learned from the first answer. Floats, not base64, are requested: every
    OpenAI-compatible server speaks floats.
    """

    name = "openai"

    def __init__(self, settings: Settings) -> None:
        self.api = _Api(settings, "embed", "text-embedding-3-small")
        configured = int(getattr(settings, "openai_embed_dim", 0) or 0)
        self._send_dim = configured > 0 and self.api.model.startswith("text-embedding-3")
        self.dim = configured or _EMBED_DIMS.get(self.api.model, 0)

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self.api.errors():
            result = await self.api.client.embeddings.create(
                model=self.api.model,
                input=list(texts),
                encoding_format="float",
                dimensions=self.dim if self._send_dim else openai.omit,
            )
        rows = sorted(result.data, key=lambda d: d.index)
        vectors = np.asarray([row.embedding for row in rows], dtype=np.float32)
        self.dim = self.dim or vectors.shape[1]
        if vectors.shape != (len(texts), self.dim):
            raise backend_failure(
                "embed", PROTOCOL, f"expected {len(texts)}x{self.dim}, got {vectors.shape}"
            )
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        normalised: np.ndarray = vectors / np.maximum(norms, 1e-12)
        return normalised


@register("moderation", "openai", key=all_settings)
class OpenAIModeration(_Remote):
    """The moderation endpoint as a :class:`pipeline.moderation.ModerationModel`."""

    name = "openai"

    def __init__(self, settings: Settings) -> None:
        self.api = _Api(settings, "moderation", "omni-moderation-latest")

    async def classify(self, text: str) -> list[str]:
        with self.api.errors():
            result = await self.api.client.moderations.create(model=self.api.model, input=text)
        verdict = result.results[0]
        if not verdict.flagged:
            return []
        flags = verdict.categories.model_dump(by_alias=True)
        return sorted(name for name, hit in flags.items() if hit) or ["unspecified"]
