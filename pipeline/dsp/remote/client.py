"""The media server's side of the audio-processing service: a chain that runs remotely.

:class:`RemoteDspChain` has :class:`~pipeline.dsp.chain.DspChain`'s synchronous interface,
because the call's reader invokes it per 10 ms frame on the event loop and must never wait
on the network there. Each frame goes into a bounded queue that feeds one gRPC
bidirectional stream per call (the frames a call hands over in one loop iteration, the
two halves of a 20 ms packet, travel as one message); results come back on the same stream. ``process`` returns
the result for the frame sent ``delay`` frames earlier: a fixed added latency, like a
jitter buffer's. A result that has not arrived by its slot is replaced by the raw frame
with the last known analysis (counted as late); the service still sees every frame in
order, so its echo canceller and noise floor do not lose state.

If the stream fails (the service is down or restarting), its queue stays full, or no
result comes back in time for a second, the call goes on with an in-process chain from
that frame on; it does not come back to the service mid-call.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator

import grpc
import numpy as np

from parley import metrics
from parley.config import Settings
from pipeline.audio import FRAME_10MS, RATE
from pipeline.dsp.base import FrameMeta, check_frame
from pipeline.dsp.chain import DspChain
from pipeline.dsp.remote import dsp_pb2 as pb
from pipeline.dsp.remote import dsp_pb2_grpc as pb_grpc
from pipeline.dsp.remote.sessions import frame_meta

logger = logging.getLogger(__name__)

QUEUE_CHUNKS = 50  # 0.5-1 s of audio waiting for the stream; beyond it the service is lost
IDLE_S = 5.0  # no frame this long: the call is gone (or its owner never closed us)
LATE_RUN = 100  # 1 s of frames in a row without a result in time: the service is hung
_channels: dict[tuple[int, str], grpc.aio.Channel] = {}


def channel(target: str) -> grpc.aio.Channel:
    """One HTTP/2 connection per target and event loop, shared by the calls of a worker."""
    key = (id(asyncio.get_running_loop()), target)
    ch = _channels.get(key)
    if ch is None:
        ch = _channels[key] = grpc.aio.insecure_channel(target, options=[
            ("grpc.keepalive_time_ms", 10_000), ("grpc.keepalive_timeout_ms", 5_000),
        ])
    return ch


@dataclasses.dataclass(slots=True)
class _Sent:
    seq: int
    pcm: np.ndarray
    t: float
    sent_at: float


class RemoteDspChain:
    """DspChain's interface over a ``parley dsp-serve`` stream, ``delay`` frames behind."""

    def __init__(self, settings: Settings, session_id: str = "") -> None:
        self.settings = settings
        self.target = settings.dsp_url
        self.delay = max(1, settings.dsp_delay_frames)
        self.session_id = f"{session_id or 'call'}-{uuid.uuid4().hex[:8]}"
        self.local: DspChain | None = None  # the fallback, once the service is lost
        self._seq = 0
        self._sent: deque[_Sent] = deque()
        self._results: dict[int, tuple[np.ndarray, FrameMeta]] = {}
        self._far: list[pb.FarEnd] = []
        self._batch: list[_Sent] = []
        self._stuck = False
        self._late_run = 0
        self._queue: asyncio.Queue[pb.Chunk | None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._last_meta = FrameMeta(t=0.0)
        self._chain_latency_ms = 20.0  # the service's chain (numpy AEC); updated from its results
        self.late_frames = 0
        self.rtt_s: deque[float] = deque(maxlen=1000)  # recent round trips, for benches
        with contextlib.suppress(RuntimeError):  # no running loop: the first frame opens it
            asyncio.get_running_loop()
            self._open()  # connect while the call's media is still being negotiated

    @property
    def latency_ms(self) -> float:
        """The in-process chain's delay plus the ``delay`` frames given to the hop."""
        return self._chain_latency_ms + self.delay * 10.0

    # -- DspChain interface (synchronous, on the event loop) ----------------------------
    def process(self, frame: np.ndarray, t: float) -> tuple[np.ndarray, FrameMeta]:
        """Send this frame; return the one sent ``delay`` frames ago, processed if it is back."""
        check_frame(frame)
        if self.local is None and self._stuck:
            self._fall_back("the service stream is stuck")
        if self.local is not None:
            return self._local_process(frame, t)
        self._queue_frame(frame, t)
        if len(self._sent) <= self.delay:
            return np.zeros(FRAME_10MS, np.int16), FrameMeta(t=t)
        due = self._sent.popleft()
        result = self._results.pop(due.seq, None)
        if result is None:
            self.late_frames += 1
            self._late_run += 1
            metrics.DSP_REMOTE_LATE.inc()
            if self._late_run >= LATE_RUN:
                self._fall_back(f"no result in time for {LATE_RUN} frames")
            return due.pcm, dataclasses.replace(self._last_meta, t=due.t)
        self._late_run = 0
        return result

    def far_end(self, pcm: np.ndarray, t: float) -> None:
        """Agent audio just sent: rides along with the next chunk, for the remote AEC."""
        if self.local is not None:
            self.local.far_end(pcm, t)
        else:
            self._far.append(pb.FarEnd(pcm=pcm.astype("<i2").tobytes(), t=t))

    def close(self) -> None:
        """End the stream (the service frees the session). Idempotent."""
        if self._queue is not None:
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(None)
        self._queue = None

    # -- the stream ---------------------------------------------------------------------
    def _queue_frame(self, frame: np.ndarray, t: float) -> None:
        """Frames given in one loop iteration go as one message (a 20 ms packet = 2 frames):
        gRPC's per-message cost in Python is of the order of the DSP's own."""
        self._sent.append(_Sent(self._seq, frame, t, time.perf_counter()))
        self._batch.append(self._sent[-1])
        self._seq += 1
        if len(self._batch) == 1:
            asyncio.get_running_loop().call_soon(self._send_batch)

    def _send_batch(self) -> None:
        batch, self._batch = self._batch, []
        if not batch or self.local is not None:
            return
        if self._queue is None or self._reader is None or self._reader.done():
            self._open()
        assert self._queue is not None
        chunk = pb.Chunk(session_id=self.session_id, rate=RATE, seq=batch[0].seq, t=batch[0].t, far_end=self._far,
                         pcm=b"".join(s.pcm.astype("<i2").tobytes() for s in batch))
        try:
            self._queue.put_nowait(chunk)
        except asyncio.QueueFull:
            self._stuck = True  # the next frame switches the call to the in-process chain
            return
        self._far = []

    def _open(self) -> None:
        self._queue = asyncio.Queue(QUEUE_CHUNKS)
        stub = pb_grpc.AudioProcessingStub(channel(self.target))
        call = stub.ProcessStream(self._requests(self._queue))
        self._reader = asyncio.create_task(self._read(call), name=f"dsp stream {self.session_id}")

    @staticmethod
    async def _requests(queue: asyncio.Queue[pb.Chunk | None]) -> AsyncIterator[pb.Chunk]:
        while True:
            try:
                chunk = await asyncio.wait_for(queue.get(), IDLE_S)
            except TimeoutError:
                return
            if chunk is None:
                return
            yield chunk

    async def _read(self, call: grpc.aio.StreamStreamCall) -> None:
        try:
            async for result in call:
                self._on_result(result)
        except asyncio.CancelledError:
            call.cancel()
            raise
        except Exception as exc:  # the service went away (AioRpcError) or broke the protocol
            if self._queue is not None:  # not closed by us
                code = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else type(exc).__name__
                logger.warning("dsp %s: stream to %s failed (%s): DSP goes on in process",
                               self.session_id, self.target, code)
                self.local = self.local or self._new_local()

    def _on_result(self, result: pb.ProcessedChunk) -> None:
        pending = {s.seq: s.sent_at for s in self._sent}
        pcm = np.frombuffer(result.pcm, dtype="<i2").astype(np.int16)
        self._chain_latency_ms = result.latency_ms
        now = time.perf_counter()
        for i, info in enumerate(result.frames):
            sent_at = pending.get(result.seq + i)
            if sent_at is None:
                continue  # its slot has passed (counted late): the frame already went on raw
            self.rtt_s.append(now - sent_at)
            metrics.DSP_REMOTE_RTT.observe(now - sent_at)
            meta = frame_meta(info)
            self._last_meta = meta
            self._results[result.seq + i] = (pcm[i * FRAME_10MS:(i + 1) * FRAME_10MS], meta)

    # -- fallback -----------------------------------------------------------------------
    def _new_local(self) -> DspChain:
        metrics.DSP_REMOTE_FALLBACKS.inc()
        return DspChain(self.settings)

    def _fall_back(self, why: str) -> None:
        logger.warning("dsp %s: %s: DSP goes on in process", self.session_id, why)
        self.local = self.local or self._new_local()
        self.close()

    def _local_process(self, frame: np.ndarray, t: float) -> tuple[np.ndarray, FrameMeta]:
        assert self.local is not None
        self._sent.clear()
        self._results.clear()
        return self.local.process(frame, t)
