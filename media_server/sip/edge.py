"""The narrowband edge of every phone leg: a 1:1 SIP call and a room's SIP participant.

Inbound 8 kHz G.711 is decoded by the :class:`RtpLeg` and lifted to the pipeline's 48 kHz
10 ms frames by a :class:`FrameResampler` (DSP, VAD and STT then run at their own rates as
for any leg); outbound, a paced 20 ms track (a call's ``AgentTrack``, a participant's room
mix) is pulled like an RTP sender would and each frame is brought down to 8 kHz for G.711.
The far-end reference for the echo canceller stays the 48 kHz frame the track produced,
exactly as on WebRTC, so AEC covers the phone's acoustic echo too.

Phones may stop sending RTP in silence (VAD/DTX, comfort noise, hold): the turn detector
would then never see the silence that ends a turn, so missing inbound audio is filled with
silence frames on the outbound clock. A phone that sends nothing at all for
``MEDIA_TIMEOUT_S`` (and is not on hold) is gone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import av
import numpy as np
from aiortc.mediastreams import MediaStreamTrack

from media_server.sip.g711 import RATE as NARROWBAND
from media_server.sip.rtp import SAMPLES_PER_TICK, RtpLeg
from parley import metrics
from pipeline.audio import FRAME_10MS
from pipeline.dsp.resample import FrameResampler
from pipeline.tasks import TaskRegistry

logger = logging.getLogger(__name__)

SILENCE_FILL_AFTER_S = 0.1  # no inbound audio this long: feed silence
MEDIA_TIMEOUT_S = 60.0  # no RTP at all this long (and not on hold): the phone is gone

#: (10 ms 48 kHz frames, arrival time of the first) -> the leg's pipeline
Feed = Callable[[list[np.ndarray], float], None]


class NarrowbandEdge:
    """Audio both ways between one :class:`RtpLeg` and a leg's pipeline (module docstring)."""

    def __init__(self, leg: RtpLeg, feed: Feed) -> None:
        self.leg = leg
        self._feed = feed
        self._up = FrameResampler()
        self._down = FrameResampler(rate=NARROWBAND, frame_samples=SAMPLES_PER_TICK)
        self._silence = np.zeros(FRAME_10MS, dtype=np.int16)
        self._last_audio = time.monotonic()
        self.started = self._last_audio
        leg.on_audio = self._on_audio

    def start(self, tasks: TaskRegistry, track: MediaStreamTrack, log_prefix: str,
              hang_up: Callable[[str], object]) -> None:
        """Media flows from now on (the 200 OK is on its way): ``track`` out, the watchdog on."""
        tasks.spawn(self.pump(track), "rtp outbound")
        tasks.spawn(self.watch_media(log_prefix, hang_up), "media watchdog")

    def _on_audio(self, pcm: np.ndarray, t: float) -> None:
        metrics.FRAMES_RECEIVED.inc()
        self._last_audio = t
        self._feed(self._up.push_pcm(pcm, NARROWBAND), t)

    async def pump(self, track: MediaStreamTrack) -> None:
        """Pull the paced track (20 ms); send it as 8 kHz G.711; fill inbound gaps."""
        while True:
            frame = await track.recv()
            assert isinstance(frame, av.AudioFrame)  # an audio track yields audio frames
            now = time.monotonic()
            for pcm in self._down.push(frame):
                self.leg.send_audio(pcm)
            if now - self._last_audio > SILENCE_FILL_AFTER_S:
                self._feed([self._silence, self._silence], now - 0.02)

    async def watch_media(self, log_prefix: str, hang_up: Callable[[str], object]) -> None:
        """``hang_up("media timeout")`` when the phone has sent no RTP for long.

        ``hang_up`` must not await the leg's close here: that close cancels this task.
        """
        while True:
            await asyncio.sleep(5.0)
            idle = time.monotonic() - max(self.leg.last_rx, self.started)
            if idle > MEDIA_TIMEOUT_S and self.leg.sending:
                logger.info("%s: no RTP for %.0f s; hanging up", log_prefix, idle)
                hang_up("media timeout")
                return
