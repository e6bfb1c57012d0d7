"""``parley dsp-serve``: the DSP chain as a gRPC service (``dsp.proto``), plus grpc.health.v1.

The event loop only moves messages: each chunk's DSP runs on a thread pool (RNNoise and
numpy release the GIL for most of it), one chunk of a session at a time under the
session's lock, so a session's state sees its frames in order. Sessions end with their
stream, on ``Flush``, or after ``IDLE_S`` without a chunk (a client that vanished).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from parley import logfmt, metrics
from parley.config import Settings
from pipeline.dsp.ns import active_kernel
from pipeline.dsp.remote import dsp_pb2 as pb
from pipeline.dsp.remote import dsp_pb2_grpc as pb_grpc
from pipeline.dsp.remote.sessions import BadChunk, DspSession

logger = logging.getLogger(__name__)

SERVICE_NAME = "parley.dsp.v1.AudioProcessing"
IDLE_S = 60.0
MAX_SESSIONS = 512  # ~30 calls a core; beyond this a node is overloaded anyway
T = TypeVar("T")


async def _abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, details: str) -> NoReturn:
    """End the RPC with ``code`` (``abort`` raises; this says so to the type checker)."""
    await context.abort(code, details)
    raise AssertionError("unreachable: ServicerContext.abort raises")


@dataclass
class _Entry:
    session: DspSession
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class AudioProcessingService(pb_grpc.AudioProcessingServicer):
    """Sessions by id; every RPC finds or opens one and runs its DSP off the loop."""

    def __init__(self, settings: Settings, pool: ThreadPoolExecutor) -> None:
        self.settings = settings
        self.pool = pool
        self.sessions: dict[str, _Entry] = {}
        self.started = time.monotonic()
        self.sessions_total = 0
        self.chunks_total = 0
        self.frames_total = 0
        self.dsp_seconds = 0.0

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def _entry(self, chunk: pb.Chunk, context: grpc.aio.ServicerContext) -> _Entry:
        if not chunk.session_id:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "session_id is required")
        entry = self.sessions.get(chunk.session_id)
        if entry is None:
            if len(self.sessions) >= MAX_SESSIONS:
                await _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, f"{MAX_SESSIONS} sessions open")
            try:
                session = await self._run(DspSession.open, chunk.session_id, self.settings, chunk.rate)
            except BadChunk as exc:
                await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            entry = self.sessions.setdefault(chunk.session_id, _Entry(session))
            if entry.session is session:
                self.sessions_total += 1
                metrics.DSP_SERVICE_SESSIONS.set(len(self.sessions))
        return entry

    async def _process(self, chunk: pb.Chunk, context: grpc.aio.ServicerContext, method: str) -> pb.ProcessedChunk:
        start = time.perf_counter()
        entry = await self._entry(chunk, context)
        async with entry.lock:
            try:
                result = await self._run(entry.session.process, chunk)
            except BadChunk as exc:
                await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        self.chunks_total += 1
        self.frames_total += len(result.frames)
        self.dsp_seconds += result.process_ms / 1000.0
        metrics.DSP_SERVICE_CHUNKS.labels(method).inc()
        metrics.DSP_SERVICE_CHUNK.observe(time.perf_counter() - start)
        return result

    def _drop(self, session_id: str) -> _Entry | None:
        entry = self.sessions.pop(session_id, None)
        metrics.DSP_SERVICE_SESSIONS.set(len(self.sessions))
        return entry

    async def ProcessChunk(self, request: pb.Chunk, context: grpc.aio.ServicerContext) -> pb.ProcessedChunk:
        return await self._process(request, context, "unary")

    async def ProcessStream(self, request_iterator: AsyncIterator[pb.Chunk],
                            context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ProcessedChunk]:
        opened: set[str] = set()
        try:
            async for chunk in request_iterator:
                opened.add(chunk.session_id)
                yield await self._process(chunk, context, "stream")
        finally:
            for session_id in opened:
                self._drop(session_id)

    async def Flush(self, request: pb.FlushRequest, context: grpc.aio.ServicerContext) -> pb.ProcessedChunk:
        entry = self._drop(request.session_id)
        if entry is None:
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"no session {request.session_id!r}")
        async with entry.lock:
            return await self._run(entry.session.flush)

    async def GetStats(self, request: pb.StatsRequest, context: grpc.aio.ServicerContext) -> pb.Stats:
        return pb.Stats(
            sessions_active=len(self.sessions), sessions_total=self.sessions_total,
            chunks_total=self.chunks_total, frames_total=self.frames_total,
            frame_ms_mean=self.dsp_seconds * 1000.0 / self.frames_total if self.frames_total else 0.0,
            uptime_s=time.monotonic() - self.started, aec=self.settings.aec, rnnoise_kernel=active_kernel(),
        )

    async def reap_idle(self, every_s: float = 10.0) -> None:
        """Drop sessions no chunk touched for ``IDLE_S`` (their client is gone)."""
        while True:
            await asyncio.sleep(every_s)
            cutoff = time.monotonic() - IDLE_S
            for session_id in [s for s, e in self.sessions.items() if e.session.last_used < cutoff]:
                if not self.sessions[session_id].lock.locked():
                    self._drop(session_id)
                    logger.info("session %s idle for %.0f s: dropped", session_id, IDLE_S)


@dataclass
class DspServer:
    """A running service: the gRPC server, its servicers and the DSP thread pool."""

    server: grpc.aio.Server
    service: AudioProcessingService
    health: health.aio.HealthServicer
    pool: ThreadPoolExecutor
    port: int

    async def stop(self, grace_s: float = 5.0) -> None:
        """Report NOT_SERVING (balancers stop sending), let open streams finish, shut down."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
        self.pool.shutdown(wait=False, cancel_futures=True)


async def start(settings: Settings, port: int | None = None) -> DspServer:
    """Start the service on HOST:``port`` (default DSP_PORT; 0 = any free port)."""
    pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="dsp")
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    service = AudioProcessingService(settings, pool)
    pb_grpc.add_AudioProcessingServicer_to_server(service, server)
    health_service = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_service, server)
    address = f"{settings.host}:{settings.dsp_port if port is None else port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"dsp-serve cannot listen on {address}") from exc
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_service.set(name, health_pb2.HealthCheckResponse.SERVING)
    return DspServer(server, service, health_service, pool, bound)


async def _serve(settings: Settings, metrics_port: int) -> None:
    running = await start(settings)
    service, port = running.service, running.port
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=settings.host)
    logger.info("dsp-serve %d: gRPC on %s:%d, metrics on %s", os.getpid(), settings.host, port,
                f":{metrics_port}/metrics" if metrics_port else "none")
    reaper = asyncio.create_task(service.reap_idle(), name="dsp idle reaper")
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    logger.info("dsp-serve: stopping (%d sessions open)", len(service.sessions))
    reaper.cancel()
    await running.stop()


def serve_forever(settings: Settings, metrics_port: int = 0) -> int:
    logfmt.configure(settings.log_level, settings.log_format)
    asyncio.run(_serve(settings, metrics_port))
    return 0
