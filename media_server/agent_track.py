"""The outbound audio track that carries the agent's voice.

aiortc's sender does no pacing: it encodes whatever ``recv()`` returns as fast as it is
returned. So this track sleeps until each frame's slot on an absolute ``time.monotonic()``
schedule (never relative sleeps, which drift), sends silence when there is nothing to say
(a stopped stream would make browsers tear down playout), and never raises: an exception in
``recv()`` silently kills aiortc's sender.

Audio to speak is queued with :meth:`AgentTrack.play`; :meth:`flush` drops everything at
once (barge-in) and :meth:`pause`/:meth:`resume` hold it (a possible interruption that may
turn out to be a cough). Every frame sent is reported to ``on_sent`` with its send time:
that is the echo canceller's far-end reference.
"""

from __future__ import annotations

import asyncio
import collections
import fractions
import logging
import time
from collections.abc import Callable

import av
import numpy as np
from aiortc.mediastreams import MediaStreamTrack

from pipeline.audio import FRAME_20MS, RATE

logger = logging.getLogger(__name__)

TIME_BASE = fractions.Fraction(1, RATE)
FRAME_S = FRAME_20MS / RATE
RESYNC_S = 0.2  # further behind than this, jump the schedule instead of bursting frames


class Playback:
    """One queued piece of speech; ``done`` resolves True when fully sent, False if flushed."""

    __slots__ = ("done", "pcm", "sent", "started_at")

    def __init__(self, pcm: np.ndarray) -> None:
        self.pcm = pcm
        self.sent = 0
        self.started_at: float | None = None
        self.done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    @property
    def duration_s(self) -> float:
        return self.pcm.size / RATE

    @property
    def sent_s(self) -> float:
        return self.sent / RATE

    def _finish(self, completed: bool) -> None:
        if not self.done.done():
            self.done.set_result(completed)


class AgentTrack(MediaStreamTrack):
    """Paced 20 ms mono 48 kHz s16 track fed by :meth:`play`."""

    kind = "audio"

    def __init__(
        self,
        on_sent: Callable[[np.ndarray, float], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._queue: collections.deque[Playback] = collections.deque()
        self._on_sent = on_sent
        self._clock = clock
        self._t0: float | None = None
        self._pts = 0
        self._paused = False
        self._silence = np.zeros(FRAME_20MS, dtype=np.int16)
        self.frames_sent = 0
        self.late_frames = 0

    # -- control (event-loop side) ------------------------------------------------
    def play(self, pcm: np.ndarray) -> Playback:
        """Queue 48 kHz mono int16 audio; returns a handle to follow its playout."""
        playback = Playback(np.ascontiguousarray(pcm, dtype=np.int16).reshape(-1))
        if playback.pcm.size == 0:
            playback._finish(True)
        else:
            self._queue.append(playback)
        return playback

    def flush(self) -> float:
        """Drop all queued audio now; returns the seconds of audio dropped."""
        dropped = sum(p.pcm.size - p.sent for p in self._queue) / RATE
        while self._queue:
            self._queue.popleft()._finish(False)
        self._paused = False
        return dropped

    def pause(self) -> None:
        """Hold playout (silence is sent) without losing the queue."""
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def speaking(self) -> bool:
        """True while queued audio remains (paused or not)."""
        return bool(self._queue)

    @property
    def queued_s(self) -> float:
        return sum(p.pcm.size - p.sent for p in self._queue) / RATE

    # -- media side ---------------------------------------------------------------
    async def recv(self) -> av.AudioFrame:
        return self.frame(await self.next_pcm())

    async def next_pcm(self) -> np.ndarray:
        """Wait for the next 20 ms slot and return what to send in it (reported to ``on_sent``).

        ``recv`` wraps it in a frame; ``media_server.encoded.PacketTrack`` encodes it itself.
        """
        try:
            t_send = await self._wait_for_slot()
            pcm = self._next_pcm(t_send)
            if self._on_sent is not None:
                self._on_sent(pcm, t_send)
        except asyncio.CancelledError:
            raise
        except Exception:  # never let the sender die: log and send silence
            logger.exception("agent track: frame production failed; sending silence")
            pcm = self._silence
        self.frames_sent += 1
        return pcm

    @property
    def pts(self) -> int:
        """Media time (samples at 48 kHz) of the frame last returned by :meth:`next_pcm`."""
        return self._pts

    def is_silence(self, pcm: np.ndarray) -> bool:
        """True for the shared all-zero frame sent while idle or paused (no need to look at it)."""
        return pcm is self._silence

    async def _wait_for_slot(self) -> float:
        now = self._clock()
        if self._t0 is None:
            self._t0 = now
        else:
            self._pts += FRAME_20MS
        deadline = self._t0 + self._pts / RATE
        if deadline > now:
            await asyncio.sleep(deadline - now)
            return deadline
        if now - deadline > FRAME_S:
            self.late_frames += 1
        if now - deadline > RESYNC_S:  # the loop stalled: restart the schedule from now
            self._t0 = now - self._pts / RATE
            return now
        return deadline

    def _next_pcm(self, t_send: float) -> np.ndarray:
        if self._paused or not self._queue:
            return self._silence
        out = np.empty(FRAME_20MS, dtype=np.int16)
        filled = 0
        while filled < FRAME_20MS and self._queue:
            head = self._queue[0]
            if head.started_at is None:
                head.started_at = t_send
            take = min(FRAME_20MS - filled, head.pcm.size - head.sent)
            out[filled : filled + take] = head.pcm[head.sent : head.sent + take]
            head.sent += take
            filled += take
            if head.sent >= head.pcm.size:
                self._queue.popleft()._finish(True)
        out[filled:] = 0
        return out

    def frame(self, pcm: np.ndarray) -> av.AudioFrame:
        """``pcm`` as the av.AudioFrame of the current slot."""
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._pts
        frame.time_base = TIME_BASE
        return frame

    def stop(self) -> None:
        self.flush()
        super().stop()
