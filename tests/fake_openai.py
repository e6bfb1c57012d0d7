"""An OpenAI-compatible HTTP server on 127.0.0.1 for tests and manual runs (real sockets).

    python -m tests.fake_openai --port 8001 --key sk-local [--reply TEXT] [--token-delay 0.03]

It matches the real API where Parley depends on it: SSE framing (``data: {json}`` events,
a usage chunk when ``stream_options.include_usage`` is set, ``data: [DONE]``), multipart
uploads, raw PCM streamed in pieces, OpenAI-style error bodies. Tests script failures per
route with :class:`Fault` (delay, HTTP status, dropped connection, drop mid-stream) and
inspect every request as a :class:`Record`, including whether the client hung up early.

No models: "speech" is a syllable-shaped tone whose pitch is derived from the text
(:func:`pitch_for`). The transcription endpoint finds the pitch of what it is sent and
answers the text last spoken at that pitch (or :meth:`FakeOpenAI.tell`), so a TTS → STT
round trip gives the text back. Error bodies echo the presented key in full — worse than
the real API, on purpose, to prove the client redacts it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import re
import socket
import time
import wave
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import web

from bench.serverproc import free_port
from parley.config import Settings

PITCH_LOW, PITCH_STEP, PITCH_BINS = 200.0, 20.0, 40
SPEECH_RATE = 24000
CATEGORIES = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit",
    "illicit/violent", "self-harm", "self-harm/intent", "self-harm/instructions", "sexual",
    "sexual/minors", "violence", "violence/graphic",
)  # fmt: skip


@dataclass
class Fault:
    """A scripted failure for one route. ``times`` = how many requests it hits (-1: all)."""

    status: int = 0  # answer with this HTTP status and an OpenAI-style error body
    delay_s: float = 0.0  # wait before answering (a stalled backend)
    drop: bool = False  # close the connection without answering
    drop_after: int = -1  # streams: close the connection after this many chunks
    stall_after: int = -1  # streams: after this many chunks, pause for stall_s
    stall_s: float = 0.0
    times: int = -1


@dataclass
class Record:
    """One request as the server saw it."""

    route: str
    body: dict[str, Any]
    authorized: bool
    at: float = field(default_factory=time.monotonic)  # arrival, on the test's own clock
    audio: dict[str, float] = field(default_factory=dict)  # transcriptions: rate, channels, seconds
    usage: dict[str, int] = field(default_factory=dict)
    chunks_sent: int = 0
    finished: bool = False
    closed_early: bool = False
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)

    def hung_up(self) -> None:
        self.closed_early = True
        self.disconnected.set()


RECORD = web.RequestKey("record", Record)


class _ApiError(Exception):
    def __init__(self, status: int, message: str, code: str = "error") -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def pitch_for(text: str) -> float:
    """The pitch the fake speaks ``text`` at (one of PITCH_BINS steps)."""
    return PITCH_LOW + PITCH_STEP * (zlib.crc32(text.encode()) % PITCH_BINS)


def speech(pitch_hz: float, seconds: float, rate: int) -> np.ndarray:
    """int16 mono "speech": a voiced tone with a 4 Hz syllable envelope and one overtone."""
    t = np.arange(int(seconds * rate)) / rate
    envelope = 0.35 + 0.65 * np.abs(np.sin(np.pi * 4.0 * t))
    voice = np.sin(2 * np.pi * pitch_hz * t) + 0.3 * np.sin(4 * np.pi * pitch_hz * t)
    return (voice * envelope * 9000).astype(np.int16)


def _pitch_bin(pitch_hz: float) -> int:
    return round((pitch_hz - PITCH_LOW) / PITCH_STEP)


def _dominant_pitch(pcm: np.ndarray, rate: int) -> float | None:
    x = pcm.astype(np.float64)
    if x.size < rate // 10 or np.sqrt(np.mean(x * x)) < 100:
        return None  # too short or silence
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.argmax(spectrum) * rate / x.size)


def _embedding(text: str, dim: int) -> list[float]:
    """Hashed bag of words: texts sharing words are close, others nearly orthogonal."""
    v = np.zeros(dim)
    for word in re.findall(r"\w+", text.lower()):
        v[zlib.crc32(word.encode()) % dim] += 1.0
    v[0] += 1e-3  # never the zero vector
    return [float(x) for x in v / np.linalg.norm(v)]


def _chunk(
    model: str, delta: dict[str, Any] | None, finish: str | None, usage: bool
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
        "choices": []
        if delta is None
        else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if usage:
        event["usage"] = None
    return event


class FakeOpenAI:
    """The server. Attributes are the knobs; change them between requests as needed."""

    def __init__(
        self,
        api_key: str = "",
        *,
        reply: str | None = "Hello there. How can I help you today?",
        token_delay_s: float = 0.0,
        audio_chunk_ms: int = 100,
        audio_chunk_delay_s: float = 0.0,
        flag_words: dict[str, str] | None = None,
        default_transcript: str = "",
        embed_dim: int = 1536,
    ) -> None:
        self.api_key = api_key  # "" accepts any key
        self.reply = reply  # None: echo the last user message
        self.token_delay_s = token_delay_s
        self.audio_chunk_ms = audio_chunk_ms
        self.audio_chunk_delay_s = audio_chunk_delay_s
        self.flag_words = dict(flag_words or {})  # word -> moderation category
        self.default_transcript = default_transcript
        self.embed_dim = embed_dim
        self.stream_options_supported = True
        self.faults: dict[str, Fault] = {}
        self.records: list[Record] = []
        self.transcripts: dict[int, str] = {}
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def requests(self, route: str) -> list[Record]:
        return [r for r in self.records if r.route == route]

    def tell(self, pitch_hz: float, text: str) -> None:
        """Transcribe audio whose dominant pitch is ``pitch_hz`` as ``text``."""
        self.transcripts[_pitch_bin(pitch_hz)] = text

    async def start(self, port: int = 0) -> None:
        app = web.Application(middlewares=[self._errors])
        routes: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] = {
            "/v1/chat/completions": self._chat,
            "/v1/audio/transcriptions": self._transcriptions,
            "/v1/audio/speech": self._speech,
            "/v1/embeddings": self._embeddings,
            "/v1/moderations": self._moderations,
        }
        for path, handler in routes.items():
            app.router.add_post(path, handler)
        app.router.add_get("/v1/models", self._models)
        # handler_cancellation: a client hanging up cancels the handler, which is how the
        # server notices a closed stream even while it is waiting between chunks.
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        await web.SockSite(self._runner, sock).start()
        self.port = sock.getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeOpenAI:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- plumbing ------------------------------------------------------------------
    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except _ApiError as exc:
            error = {
                "message": exc.message,
                "type": "invalid_request_error",
                "param": None,
                "code": exc.code,
            }
            return web.json_response({"error": error}, status=exc.status)
        except asyncio.CancelledError:
            record = request.get(RECORD)
            if record is not None:
                record.hung_up()
            raise

    async def _admit(
        self, request: web.Request, route: str, body: dict[str, Any]
    ) -> tuple[Record, Fault]:
        """Record the request, check the key, apply the route's fault (if any)."""
        presented = request.headers.get("Authorization", "").removeprefix("Bearer ")
        record = Record(route, body, authorized=not self.api_key or presented == self.api_key)
        self.records.append(record)
        request[RECORD] = record
        if not record.authorized:
            raise _ApiError(401, f"Incorrect API key provided: {presented}.", "invalid_api_key")
        fault = self._take_fault(route)
        if fault.delay_s:
            await asyncio.sleep(fault.delay_s)
        if fault.drop:
            self._drop(request, record)
        if fault.status:
            raise _ApiError(fault.status, f"scripted failure {fault.status}", "fake_fault")
        return record, fault

    def _take_fault(self, route: str) -> Fault:
        fault = self.faults.get(route)
        if fault is None:
            return Fault()
        if fault.times > 0:
            fault.times -= 1
            if fault.times == 0:
                del self.faults[route]
        return fault

    @staticmethod
    def _drop(request: web.Request, record: Record) -> None:
        if request.transport is not None:
            request.transport.abort()
        record.hung_up()
        raise asyncio.CancelledError  # nothing more can be sent; end the handler quietly

    async def _send(
        self,
        request: web.Request,
        record: Record,
        fault: Fault,
        content_type: str,
        chunks: list[bytes],
        delay_s: float,
    ) -> web.StreamResponse:
        """Stream ``chunks`` with ``delay_s`` between them, honouring ``fault.drop_after``."""
        response = web.StreamResponse(
            headers={"Content-Type": content_type, "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        try:
            for i, chunk in enumerate(chunks):
                if i and delay_s:
                    await asyncio.sleep(delay_s)
                if i == fault.drop_after:
                    self._drop(request, record)
                if i == fault.stall_after:
                    await asyncio.sleep(fault.stall_s)
                await response.write(chunk)
                record.chunks_sent += 1
            await response.write_eof()
        except ConnectionResetError:  # the client hung up between our sleeps
            record.hung_up()
            return response
        record.finished = True
        return response

    # -- routes --------------------------------------------------------------------
    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        record, fault = await self._admit(request, "chat", body)
        if "stream_options" in body and not self.stream_options_supported:
            raise _ApiError(400, "Unrecognized request argument supplied: stream_options")
        if not body.get("stream"):
            raise _ApiError(400, "this fake server only streams: set stream=true")
        messages = body.get("messages", [])
        text = self.reply
        if text is None:
            users = [m["content"] for m in messages if m.get("role") == "user"]
            text = f"You said: {users[-1] if users else ''}"
        pieces = re.findall(r"\s*\S+", text)
        with_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        model = str(body.get("model", ""))
        events = [_chunk(model, {"role": "assistant", "content": ""}, None, with_usage)]
        events += [_chunk(model, {"content": p}, None, with_usage) for p in pieces]
        events.append(_chunk(model, {}, "stop", with_usage))
        if with_usage:
            prompt = sum(len(str(m.get("content", "")).split()) + 4 for m in messages)
            record.usage = {
                "prompt_tokens": prompt,
                "completion_tokens": len(pieces),
                "total_tokens": prompt + len(pieces),
            }
            events.append({**_chunk(model, None, None, False), "usage": record.usage})
        chunks = [f"data: {json.dumps(e)}\n\n".encode() for e in events] + [b"data: [DONE]\n\n"]
        return await self._send(
            request, record, fault, "text/event-stream", chunks, self.token_delay_s
        )

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        record, fault = await self._admit(request, "speech", body)
        if body.get("response_format") != "pcm":
            raise _ApiError(400, "this fake server only speaks response_format=pcm")
        text = str(body.get("input", ""))
        pitch = pitch_for(text)
        self.tell(pitch, text)
        seconds = max(0.5, 0.35 * len(text.split())) / float(body.get("speed", 1.0))
        audio = speech(pitch, seconds, SPEECH_RATE).astype("<i2").tobytes()
        step = SPEECH_RATE * 2 * self.audio_chunk_ms // 1000
        chunks = [audio[i : i + step] for i in range(0, len(audio), step)]
        return await self._send(
            request, record, fault, "audio/pcm", chunks, self.audio_chunk_delay_s
        )

    async def _transcriptions(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        record, _ = await self._admit(
            request, "transcriptions", {k: v for k, v in form.items() if isinstance(v, str)}
        )
        upload = form.get("file")
        if not isinstance(upload, web.FileField):
            raise _ApiError(400, "file is required")
        with wave.open(io.BytesIO(upload.file.read())) as wav:
            rate, channels = wav.getframerate(), wav.getnchannels()
            pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
        record.audio = {"rate": rate, "channels": channels, "seconds": pcm.size / channels / rate}
        pitch = _dominant_pitch(pcm, rate)
        text = (
            self.default_transcript
            if pitch is None
            else self.transcripts.get(_pitch_bin(pitch), self.default_transcript)
        )
        if record.body.get("response_format") == "text":
            return web.Response(text=text)
        return web.json_response({"text": text})

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        await self._admit(request, "embeddings", body)
        inputs = body["input"] if isinstance(body.get("input"), list) else [body.get("input", "")]
        dim = int(body.get("dimensions") or self.embed_dim)
        data = []
        for i, text in enumerate(inputs):
            vector: Any = _embedding(str(text), dim)
            if body.get("encoding_format") == "base64":
                vector = base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
            data.append({"object": "embedding", "index": i, "embedding": vector})
        tokens = sum(len(str(t).split()) for t in inputs)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return web.json_response(
            {"object": "list", "data": data, "model": body.get("model"), "usage": usage}
        )

    async def _moderations(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        await self._admit(request, "moderations", body)
        inputs = body["input"] if isinstance(body.get("input"), list) else [body.get("input", "")]
        results = [self._moderate(str(text)) for text in inputs]
        return web.json_response(
            {"id": "modr-fake", "model": body.get("model"), "results": results}
        )

    def _moderate(self, text: str) -> dict[str, Any]:
        hits = {category for word, category in self.flag_words.items() if word in text.lower()}
        return {
            "flagged": bool(hits),
            "categories": {c: c in hits for c in CATEGORIES},
            "category_scores": {c: 0.99 if c in hits else 0.001 for c in CATEGORIES},
            "category_applied_input_types": {c: ["text"] for c in CATEGORIES},
        }

    async def _models(self, request: web.Request) -> web.StreamResponse:
        await self._admit(request, "models", {})
        names = (
            "gpt-4o-mini",
            "gpt-4o-mini-transcribe",
            "gpt-4o-mini-tts",
            "text-embedding-3-small",
            "omni-moderation-latest",
        )
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "fake"} for n in names]
        return web.json_response({"object": "list", "data": data})


def dead_url() -> str:
    """A base URL on which nothing listens (connection refused)."""
    return f"http://127.0.0.1:{free_port()}/v1"


def settings_for(base_url: str, api_key: str, **fields: Any) -> Settings:
    """Settings with every stage on the openai backend at ``base_url``; extra fields are set
    as attributes (the OpenAI settings are read with getattr until config declares them)."""
    settings = Settings(
        stt="openai", llm="openai", tts="openai", embed="openai", openai_base_url=base_url
    )
    for name, value in {"openai_api_key": api_key, **fields}.items():
        setattr(settings, name, value)
    return settings


async def _serve(args: argparse.Namespace) -> None:
    flags = dict(item.split("=", 1) if "=" in item else (item, "harassment") for item in args.flag)
    server = FakeOpenAI(
        args.key,
        reply=args.reply,
        token_delay_s=args.token_delay,
        audio_chunk_delay_s=args.audio_delay,
        flag_words=flags,
        default_transcript=args.transcript,
    )
    await server.start(args.port)
    print(f"fake OpenAI API at {server.base_url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fake_openai", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--key", default="", help="expected API key; empty accepts any")
    parser.add_argument("--reply", default=None, help="chat reply; default echoes the user")
    parser.add_argument("--token-delay", type=float, default=0.03, help="seconds between tokens")
    parser.add_argument(
        "--audio-delay", type=float, default=0.05, help="seconds between PCM chunks"
    )
    parser.add_argument("--flag", action="append", default=[], help="moderation word[=category]")
    parser.add_argument("--transcript", default="hello", help="transcript of unknown audio")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
