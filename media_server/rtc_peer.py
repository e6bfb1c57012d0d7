"""The aiortc side every WebRTC leg shares: a 1:1 ``RtcCall`` and a room's ``RtcParticipant``.

:func:`new_peer` configures the peer connection (ICE servers); :func:`answer_offer` answers
the client's offer, any offer aiortc cannot answer being a :class:`BadOffer` (a 400, never
a 500); :class:`PeerWiring` hooks a leg to it: the client's ``events`` DataChannel to the
leg's event sink and message intake, every remote track read until it ends (audio as 10 ms
frames to the leg's ``feed``, other kinds drained: an unread aiortc track grows an unbounded
queue), and a failed or closed connection ends the leg.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import av
import numpy as np
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.exceptions import InternalError, InvalidAccessError, InvalidStateError, OperationError
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from media_server.events import DataChannelEvents
from media_server.tuning import tune_audio_receivers
from parley import metrics
from parley.config import Settings
from pipeline.dsp.resample import FrameResampler
from pipeline.tasks import TaskRegistry

#: (10 ms 48 kHz frames, arrival time of the first) -> the leg's pipeline
Feed = Callable[[list[np.ndarray], float], None]


#: what aiortc raises on an offer it cannot answer (fuzzing found each of them)
ANSWER_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, AssertionError,
                 InternalError, InvalidAccessError, InvalidStateError, OperationError)


class BadOffer(ValueError):
    """The client's SDP offer cannot be answered (malformed, or no audio)."""


def new_peer(settings: Settings) -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[RTCIceServer(urls=u) for u in settings.ice_server_urls]))


async def answer_offer(pc: RTCPeerConnection, sdp: str, track: MediaStreamTrack, jitter_prefetch: int) -> str:
    """Apply the client's offer, send ``track``, and return the answer SDP (ICE gathered).

    ``signaling.sdp_guard`` checked the offer already; this is the net under it, so that no
    leg (call or room participant) turns a malformed offer into a 500.
    """
    if "m=audio" not in sdp:
        raise BadOffer("the offer has no audio section")
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        tune_audio_receivers(pc, jitter_prefetch)
        pc.addTrack(track)
        await pc.setLocalDescription(await pc.createAnswer())
    except ANSWER_ERRORS as exc:
        raise BadOffer(f"SDP offer cannot be answered: {type(exc).__name__}") from exc
    return str(pc.localDescription.sdp)


async def read_inbound(track: MediaStreamTrack, feed: Feed) -> None:
    """Read an inbound audio track until it ends, feeding converted 10 ms frames."""
    converter = FrameResampler()
    while True:
        try:
            frame = await track.recv()
            assert isinstance(frame, av.AudioFrame)  # an audio track yields audio frames
        except MediaStreamError:
            return
        metrics.FRAMES_RECEIVED.inc()
        feed(converter.push(frame), time.monotonic())


async def drain(track: MediaStreamTrack) -> None:
    with contextlib.suppress(MediaStreamError):
        while True:
            await track.recv()


class PeerWiring:
    """One leg's handlers on its peer connection (see module docstring)."""

    def __init__(self, pc: RTCPeerConnection, tasks: TaskRegistry, sink: DataChannelEvents,
                 on_message: Callable[[str | bytes], None], feed: Feed,
                 end: Callable[[str], None], on_events_open: Callable[[], None] | None = None) -> None:
        self.pc = pc
        self._tasks = tasks
        self._sink = sink
        self._on_message = on_message
        self._feed = feed
        self._end = end
        self._on_events_open = on_events_open
        pc.on("datachannel", self._on_datachannel)
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", self._on_state)

    def _on_datachannel(self, channel: Any) -> None:
        if channel.label != "events":
            return
        self._sink.attach(channel)
        channel.on("message", self._on_message)
        if self._on_events_open is not None:
            self._on_events_open()

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._tasks.spawn(self._read(track), "inbound audio")
        else:  # never leave a remote track unread
            self._tasks.spawn(drain(track), f"drain {track.kind}")

    async def _read(self, track: MediaStreamTrack) -> None:
        await read_inbound(track, self._feed)
        self._end("remote track ended")

    async def _on_state(self) -> None:
        state = self.pc.connectionState
        if state in ("failed", "closed"):
            self._end(f"connection {state}")
