"""One call: a client's audio in, the agent's voice out, events both ways.

:class:`Call` holds what every transport shares — the paced :class:`AgentTrack`, the agent,
the event sink, a registry of named tasks and an idempotent :meth:`Call.close` — and
:class:`RtcCall` (aiortc peer) and ``media_server.ws_call.WsCall`` (WebSocket fallback)
add the transport. Inbound audio is always consumed, even when nobody listens: an unread
aiortc track grows an unbounded queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from media_server.agent_track import AgentTrack
from media_server.events import DataChannelEvents, EventSink, event
from media_server.tuning import set_audio_jitter_prefetch
from parley import metrics
from parley.config import Settings
from pipeline.agent import Agent, Emit
from pipeline.dsp.resample import FrameResampler

logger = logging.getLogger(__name__)

#: (session, persona id, outbound track, emit) -> agent; LookupError for an unknown persona.
AgentFactory = Callable[["CallSession", str, AgentTrack, Emit], Agent]
MAX_EVENT_BYTES = 16384
PING_TIMEOUT_S = 10.0  # a client that pinged and then went quiet this long is gone
CONNECT_TIMEOUT_S = 20.0  # an answered call whose media never connected is abandoned


@dataclass(frozen=True, slots=True)
class CallSession:
    """Who the call belongs to (from the session token)."""

    session_id: str
    user_id: str
    persona_id: str


class BadOffer(ValueError):
    """The client's SDP offer cannot be answered (malformed, or no audio)."""


class Call:
    """Transport-independent part of a call."""

    transport = "base"

    def __init__(self, session: CallSession, events: EventSink, agent_factory: AgentFactory) -> None:
        self.id = uuid.uuid4().hex
        self.session = session
        self.events = events
        self.track = AgentTrack(on_sent=self._on_sent)
        self._agent_factory = agent_factory
        self.persona_id = session.persona_id
        self.agent = agent_factory(session, session.persona_id, self.track, self.events.send)
        self.closed = asyncio.Event()
        self.started = time.monotonic()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._last_ping: float | None = None
        self._late_reported = 0
        self.log_prefix = f"call {self.id[:8]}"

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Start a named task owned by this call (cancelled by :meth:`close`)."""
        task = asyncio.create_task(coro, name=f"{self.log_prefix} {name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("%s: task %s failed", self.log_prefix, task.get_name(),
                         exc_info=task.exception())

    def _on_sent(self, pcm: np.ndarray, t: float) -> None:
        self.agent.on_far_end(pcm, t)
        metrics.FRAMES_SENT.inc()
        late = self.track.late_frames
        if late != self._late_reported:
            metrics.FRAMES_LATE.inc(late - self._late_reported)
            self._late_reported = late

    def feed(self, frames: list[np.ndarray], t: float) -> None:
        """Hand converted 10 ms frames to the agent; ``t`` is the arrival time of the first."""
        for i, pcm in enumerate(frames):
            self.agent.on_frame(pcm, t + i * 0.01)

    async def consume(self, track: MediaStreamTrack) -> None:
        """Read an inbound audio track until it ends, feeding the agent."""
        converter = FrameResampler()
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                break
            metrics.FRAMES_RECEIVED.inc()
            self.feed(converter.push(frame), time.monotonic())
        if not self._closing:
            self.spawn(self.close("remote track ended"), "close")

    def on_client_message(self, raw: str | bytes) -> None:
        """A JSON event from the client (DataChannel or WebSocket)."""
        if len(raw) > MAX_EVENT_BYTES:
            self.events.send(event("error", code="event_too_large", message="event over 16 KiB"))
            return
        try:
            message = json.loads(raw)
            if not isinstance(message, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            self.events.send(event("error", code="bad_event", message=f"invalid JSON event: {exc}"))
            return
        if message.get("type") == "ping":
            self._last_ping = time.monotonic()
        self.spawn(self.handle_message(message), f"event {message.get('type')}")

    async def handle_message(self, message: dict[str, Any]) -> None:
        if message.get("type") == "settings" and "persona" in message:
            await self._switch_persona(message.pop("persona"))
            if len(message) == 1:
                return
        await self.agent.on_message(message)

    async def _switch_persona(self, persona_id: Any) -> None:
        """``settings {persona}``: a new agent for the rest of the call, on the same track."""
        if persona_id == self.persona_id:
            return
        try:
            agent = self._agent_factory(self.session, str(persona_id), self.track, self.events.send)
        except LookupError:
            self.events.send(event("error", code="unknown_persona", message=f"unknown persona {persona_id!r}"))
            return
        old, self.agent, self.persona_id = self.agent, agent, str(persona_id)
        self.track.flush()
        await old.close()
        self.events.send(event("turn", state=agent.state))

    @property
    def connected(self) -> bool:
        """Media flows (WebRTC: the peer connection reached "connected")."""
        return True

    async def watchdog(self) -> None:
        """Close the call when its client is gone: it stopped pinging, or never connected."""
        while not self._closing:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            if self._last_ping is not None and now - self._last_ping > PING_TIMEOUT_S:
                reason = "ping timeout"
            elif not self.connected and now - self.started > CONNECT_TIMEOUT_S:
                reason = "media never connected"
            else:
                continue
            logger.info("%s: %s; closing", self.log_prefix, reason)
            self.spawn(self.close(reason), "close")
            return

    async def close(self, reason: str = "hangup") -> None:
        """Idempotent teardown: agent, tasks, track, transport; waits for all of it."""
        if self._closing:
            await self.closed.wait()
            return
        self._closing = True
        logger.info("%s: closing (%s)", self.log_prefix, reason)
        await self.agent.close()
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=3)
        self.track.stop()
        with contextlib.suppress(Exception):
            await self.close_transport()
        self.closed.set()

    async def close_transport(self) -> None:
        """Transport-specific teardown (peer connection, socket)."""


class RtcCall(Call):
    """A call over an aiortc peer connection (browser, ``parley call``, WHIP)."""

    transport = "webrtc"

    def __init__(self, session: CallSession, agent_factory: AgentFactory, settings: Settings) -> None:
        self._dc_events = DataChannelEvents()
        super().__init__(session, self._dc_events, agent_factory)
        servers = [RTCIceServer(urls=url) for url in settings.ice_server_urls]
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        self._jitter_prefetch = settings.jitter_prefetch

    async def accept(self, sdp: str) -> str:
        """Apply the client's offer and return our answer SDP (ICE already gathered)."""
        if "m=audio" not in sdp:
            raise BadOffer("the offer has no audio section")
        pc = self.pc
        pc.on("datachannel", self._on_datachannel)
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", self._on_state)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            raise BadOffer(f"malformed SDP offer: {exc}") from exc
        set_audio_jitter_prefetch(pc, self._jitter_prefetch)
        pc.addTrack(self.track)
        await pc.setLocalDescription(await pc.createAnswer())
        self.spawn(self.watchdog(), "watchdog")
        return pc.localDescription.sdp

    @property
    def connected(self) -> bool:
        return self.pc.connectionState == "connected"

    def _on_datachannel(self, channel: Any) -> None:
        if channel.label != "events":
            return
        self._dc_events.attach(channel)
        channel.on("message", self.on_client_message)
        self._dc_events.send(event("turn", state=self.agent.state))

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self.spawn(self.consume(track), "inbound audio")
        else:  # never leave a remote track unread
            self.spawn(_drain(track), f"drain {track.kind}")

    async def _on_state(self) -> None:
        state = self.pc.connectionState
        logger.debug("%s: connection %s", self.log_prefix, state)
        if state in ("failed", "closed") and not self._closing:
            self.spawn(self.close(f"connection {state}"), "close")

    async def close_transport(self) -> None:
        await self.pc.close()


async def _drain(track: MediaStreamTrack) -> None:
    with contextlib.suppress(MediaStreamError):
        while True:
            await track.recv()
