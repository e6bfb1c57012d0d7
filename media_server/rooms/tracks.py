"""The two audio tracks of a room: what each participant is sent, and the agent's voice.

:class:`MixTrack` is a participant's outbound track. The room's mixer is its clock: every
20 ms tick delivers one frame, and ``recv`` hands frames to aiortc's sender as they come.
The queue is short and drops its oldest frame when full, so a participant whose sender
lags (a congested peer) gets fresh audio and never slows the mixer down.

:class:`RoomVoice` is the agent's voice: an :class:`AgentTrack` (the ``Speaker`` the voice
agent already plays into, with pause/flush for barge-in) that is never sent on its own;
the mixer pulls one frame from it per tick. It only *starts* a reply when the floor is
free — no human in the middle of a turn — and then finishes it unless barged in on.
"""

from __future__ import annotations

import asyncio
import collections
import fractions

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from media_server.agent_track import AgentTrack
from pipeline.audio import FRAME_20MS, RATE

TIME_BASE = fractions.Fraction(1, RATE)
QUEUE_FRAMES = 10  # 200 ms, as AgentTrack resyncs: rides out loop stalls, bounds the delay


class MixTrack(MediaStreamTrack):
    """A participant's outbound audio, fed by the room mixer's :meth:`deliver`."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._queue: collections.deque[tuple[int, np.ndarray]] = collections.deque()
        self._ready = asyncio.Event()
        self.delivered = 0
        self.dropped = 0
        self.frames_sent = 0

    def deliver(self, tick: int, pcm: np.ndarray) -> None:
        """One 20 ms mix (960 int16 samples) for this listener; never blocks.

        ``tick`` (the mixer's frame number) is the frame's media time, so a dropped frame
        shows the receiver a gap in time, as a lost packet would, instead of a shift.
        """
        self.delivered += 1
        if len(self._queue) >= QUEUE_FRAMES:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append((tick, pcm))
        self._ready.set()

    async def recv(self) -> av.AudioFrame:
        while not self._queue:
            if self.readyState != "live":
                raise MediaStreamError  # stopped: ends aiortc's sender, as intended
            self._ready.clear()
            await self._ready.wait()
        tick, pcm = self._queue.popleft()
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = tick * FRAME_20MS
        frame.time_base = TIME_BASE
        self.frames_sent += 1
        return frame

    def stop(self) -> None:
        super().stop()
        self._ready.set()


class RoomVoice(AgentTrack):
    """The agent's voice in a room, pulled by the mixer rather than by a sender."""

    def __init__(self) -> None:
        super().__init__()
        self._talking = False

    @property
    def talking(self) -> bool:
        """True while a started reply is being played (it holds the floor)."""
        return self._talking

    def pull(self, t: float, floor_free: bool) -> np.ndarray | None:
        """This tick's 20 ms of the agent's voice, or None when it is silent."""
        if not self._talking:
            if not self.speaking or self.paused or not floor_free:
                return None
            self._talking = True
        pcm = self._next_pcm(t)
        self.frames_sent += 1
        if not self.speaking:
            self._talking = False
        return pcm

    def flush(self) -> float:
        self._talking = False
        return super().flush()
