"""Recording consenting speakers, without stalling the media loop.

A :class:`Recorder` exists only where consent was given (the signaling layer decides;
without consent no recorder exists and nothing is kept). It writes one WAV with a channel
(a *lane*) per entry of its ``channels``: a 1:1 call is ``CHANNELS`` (the caller, after
decoding, and the agent, exactly as sent); a room records one mono file per speaker
(``("participant",)`` for a person's decoded inbound audio, ``("agent",)`` for the agent's
voice), so each file belongs to one person and leaves with them. :meth:`Recorder.inbound`
feeds the first lane (10 ms frames), :meth:`Recorder.outbound` the last (the agent's 20 ms
frames); a mono recorder's one lane is both.

On the event loop it only places frame references on a shared timeline — anchored at the
first frame's monotonic time, a lane that fell behind its clock (a gap in the RTP, a muted
or stalled side) padded with silence — and every ``CHUNK_S`` seconds of all lanes become
one write job. Jobs go through a bounded queue to one writer task per recorder, which runs
the interleaving and the file write in a small shared thread pool; a full queue (a disk
slower than real time) drops whole chunks of every lane, so the channels stay aligned, and
says so in the log once. A write that fails ends the recording (the partial file is removed
at close); a full disk is reported as an outage of ``disk`` (``parley.deps``: counted, logged
once until a recording is kept again), so the next call simply tries again.

The result is a 16-bit WAV at 48 kHz. On :meth:`Recorder.close` the last partial chunk is
written, the header finalised and ``on_finished`` called with a :class:`RecordingFile`;
storing it (a folder or S3, a database row) is the caller's business
(``signaling.recordings``). Memory per recorder is bounded by ``(MAX_QUEUED_CHUNKS + 2) *
CHUNK_S`` seconds of its channels (~3.8 MB for a stereo call).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
import wave
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from parley import deps
from pipeline.audio import RATE
from pipeline.tasks import TaskRegistry

logger = logging.getLogger(__name__)

CHANNELS = ("caller", "agent")  # a 1:1 call: left the caller, right the agent
CHUNK_S = 2.0
MAX_QUEUED_CHUNKS = 8
GAP_S = 0.25  # a lane this far behind its clock gets the gap as silence: less is network or
# scheduling jitter, whose late frames come in a burst right after (a 100 ms limit cut holes into
# a loaded server's recordings); a lane is never more than this behind its clock
STALL_S = 2.0  # a lane without frames this far behind the other is padded (a stalled side)
CLOSE_TIMEOUT_S = 10.0
_CHUNK = int(CHUNK_S * RATE)
#: errors that say the disk, not this recording, is at fault: an outage, logged once (parley.deps)
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS})
# Writes are small and sequential per call: two threads serve every recording of the worker
# (a thread per call would cost threads per call, which the churn tests count).
_EXECUTOR = ThreadPoolExecutor(max_workers=2, thread_name_prefix="recording")


@dataclass(frozen=True, slots=True)
class RecordingFile:
    """A finished recording on local disk, waiting to be stored."""

    path: Path
    sample_rate: int
    channels: tuple[str, ...]
    duration_s: float
    bytes: int
    started_at: datetime
    ended_at: datetime
    dropped_s: float


#: told how a recording ended: the finished file, or None when nothing was kept
OnFinished = Callable[[RecordingFile | None], None]


class _Lane:
    """One direction's frames since the last chunk, and how far along the timeline it is."""

    __slots__ = ("buffered", "frames", "position")

    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []
        self.buffered = 0  # samples in ``frames``
        self.position = 0  # samples placed on the timeline since the start (padding included)

    def add(self, pcm: np.ndarray) -> None:
        self.frames.append(pcm)
        self.buffered += pcm.size
        self.position += pcm.size

    def pad_to(self, sample: int) -> None:
        if sample > self.position:
            self.add(np.zeros(sample - self.position, np.int16))

    def take(self) -> list[np.ndarray]:
        frames, self.frames, self.buffered = self.frames, [], 0
        return frames


#: one write job: each lane's frames since the last one (the recorder's channel order)
Job = tuple[list[np.ndarray], ...]


class _WavWriter:
    """The file side, run only in the executor and one job at a time (the writer task's order).

    Lanes rarely end a chunk on the same sample: what one lane has beyond the shortest is
    carried into the next job, so the channels stay sample-aligned.
    """

    def __init__(self, path: Path, channels: int) -> None:
        self.path = path
        self.frames_written = 0
        self._wav: wave.Wave_write | None = None
        self._carry = tuple(np.zeros(0, np.int16) for _ in range(channels))

    def write(self, lanes: Job, final: bool = False) -> None:
        pcm = [np.concatenate([carry, *frames]) for carry, frames in zip(self._carry, lanes, strict=True)]
        sizes = [lane.size for lane in pcm]
        n = max(sizes) if final else min(sizes)
        self._carry = tuple(lane[n:] for lane in pcm)
        interleaved = np.zeros((n, len(pcm)), np.int16)
        for channel, lane in enumerate(pcm):
            interleaved[: min(n, lane.size), channel] = lane[:n]
        if self._wav is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._wav = wave.open(str(self.path), "wb")  # closed by close()
            self._wav.setnchannels(len(pcm))
            self._wav.setsampwidth(2)
            self._wav.setframerate(RATE)
        self._wav.writeframes(interleaved.tobytes())
        self.frames_written += n

    def close(self) -> int:
        """Finalise the header; the file's size in bytes."""
        if self._wav is not None:
            self._wav.close()
        return self.path.stat().st_size

    def discard(self) -> None:
        """Remove the partial file; best effort (its failure was logged where it happened)."""
        with contextlib.suppress(Exception):
            if self._wav is not None:
                self._wav.close()
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)


class Recorder:
    """Taps one call's or one speaker's audio (see the module docstring); create it inside
    the event loop."""

    def __init__(self, path: Path, on_finished: OnFinished, log_prefix: str = "recording",
                 channels: tuple[str, ...] = CHANNELS) -> None:
        if not channels:
            raise ValueError("a recording needs at least one channel")
        self.log_prefix = log_prefix
        self.channels = channels
        self._on_finished = on_finished
        self._lanes = tuple(_Lane() for _ in channels)
        self._t0: float | None = None
        self._started_at: datetime | None = None
        self._jobs: asyncio.Queue[Job | None] = asyncio.Queue(MAX_QUEUED_CHUNKS)
        self._writer = _WavWriter(path, len(channels))
        self.dropped_samples = 0
        self._failed = False
        self._closed = False
        self._tasks = TaskRegistry(log_prefix)
        self._tasks.spawn(self._write_jobs(), "writer")

    # -- the event-loop side: cheap, never blocks ------------------------------------------

    def inbound(self, frames: list[np.ndarray], t: float) -> None:
        """The speaker's decoded 10 ms frames (first lane), the first one arriving at ``t``
        (monotonic)."""
        for i, pcm in enumerate(frames):
            self._place(0, pcm, t + i * 0.01)

    def outbound(self, pcm: np.ndarray, t: float) -> None:
        """One frame the agent's track sent at ``t`` (monotonic; last lane)."""
        self._place(len(self._lanes) - 1, pcm, t)

    def _place(self, side: int, pcm: np.ndarray, t: float) -> None:
        if self._closed or self._failed:
            return
        if self._t0 is None:
            self._t0, self._started_at = t, datetime.now(UTC)
        due = int((t - self._t0) * RATE)
        lane = self._lanes[side]
        if due - lane.position > GAP_S * RATE:
            lane.pad_to(due)
        for other in self._lanes:
            if due - other.position > STALL_S * RATE:
                other.pad_to(due)
        lane.add(pcm)
        if min(each.buffered for each in self._lanes) >= _CHUNK:
            self._submit()

    def _submit(self) -> None:
        job = tuple(lane.take() for lane in self._lanes)
        try:
            self._jobs.put_nowait(job)
        except asyncio.QueueFull:
            if not self.dropped_samples:  # said once per recorder
                logger.warning("%s: recording cannot keep up with the disk; dropping audio", self.log_prefix)
            self.dropped_samples += sum(f.size for f in job[0])

    # -- the writer side ---------------------------------------------------------------------

    async def _write_jobs(self) -> None:
        loop = asyncio.get_running_loop()
        while (job := await self._jobs.get()) is not None:
            if self._failed:
                continue
            try:
                await loop.run_in_executor(_EXECUTOR, self._writer.write, job)
            except OSError as exc:
                self._write_failed(exc, "writing")
                self._failed = True

    def _write_failed(self, exc: OSError, doing: str) -> None:
        """A full (or read-only, or failing) disk is an outage of the data dir: counted every time
        (``parley_dependency_errors_total{dependency="disk"}``), logged once until a recording
        is kept again. Any other error is this recording's own: logged with its traceback."""
        where = f"{self.log_prefix}: {doing} {self._writer.path}"
        if exc.errno in DISK_ERRNOS:
            deps.failed("disk", exc, f"recordings are dropped, calls go on (first: {where})")
        else:
            logger.error("%s failed; the recording is dropped", where, exc_info=exc)

    async def close(self) -> RecordingFile | None:
        """Write what is left, finalise the file and report it; None if nothing was recorded.

        Idempotent. A recording that failed (disk full) is removed rather than kept half-valid.
        """
        if self._closed:
            return None
        self._closed = True
        tail = tuple(lane.take() for lane in self._lanes)
        try:
            await asyncio.wait_for(self._drain(), CLOSE_TIMEOUT_S)
        except TimeoutError:
            logger.warning("%s: the recording's writes did not finish in %.0f s; dropping it", self.log_prefix,
                           CLOSE_TIMEOUT_S)
            self._failed = True
        finally:
            await self._tasks.cancel_all(1.0)
        return await asyncio.get_running_loop().run_in_executor(_EXECUTOR, self._finish, tail)

    async def _drain(self) -> None:
        await self._jobs.put(None)  # behind the queued chunks: the writer ends after them
        await self._tasks.wait(CLOSE_TIMEOUT_S)

    def _finish(self, tail: Job) -> RecordingFile | None:
        """Executor side of :meth:`close`: the last samples, the header, the report."""
        writer = self._writer
        if self._failed or self._started_at is None:
            writer.discard()
            return None
        try:
            writer.write(tail, final=True)
            size = writer.close()
        except OSError as exc:
            self._write_failed(exc, "finishing")
            writer.discard()
            return None
        deps.ok("disk")
        return RecordingFile(
            path=writer.path, sample_rate=RATE, channels=self.channels, duration_s=writer.frames_written / RATE,
            bytes=size, started_at=self._started_at, ended_at=datetime.now(UTC),
            dropped_s=self.dropped_samples / RATE,
        )

    async def finish(self) -> None:
        """Close and hand the file (or None) to ``on_finished``: what a call (or a room, for a
        speaker) does when it ends."""
        started = time.monotonic()
        done = None
        try:
            done = await self.close()
        finally:
            self._on_finished(done)
        if done is None:
            return
        logger.info("%s: recorded %.1f s (%d bytes, %.1f s dropped) in %.2f s", self.log_prefix, done.duration_s,
                    done.bytes, done.dropped_s, time.monotonic() - started)
