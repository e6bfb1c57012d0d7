"""One call: a client's audio in, the agent's voice out, events both ways.

:class:`Call` holds what every transport shares — the paced :class:`AgentTrack`, the agent,
the event sink, a registry of named tasks, the intake of client messages
(``media_server.client_messages``: checked, then one consumer handles them in order) and an
idempotent :meth:`Call.close` — and
:class:`RtcCall` (aiortc peer) and ``media_server.ws_call.WsCall`` (WebSocket fallback)
add the transport. Inbound audio is always consumed, even when nobody listens: an unread
aiortc track grows an unbounded queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from media_server.agent_track import AgentTrack
from media_server.client_messages import ClientMessages
from media_server.encoded import PacketTrack, negotiated_audio_codec
from media_server.events import DataChannelEvents, EventSink
from media_server.recording import Recorder
from media_server.rtc_peer import PeerWiring, answer_offer, new_peer
from parley import logfmt, metrics
from parley.config import Settings
from pipeline import events
from pipeline.agent.base import Agent, Emit
from pipeline.tasks import TaskRegistry

logger = logging.getLogger(__name__)

#: (session, persona id, outbound track, emit) -> agent; LookupError for an unknown persona.
AgentFactory = Callable[["CallSession", str, AgentTrack, Emit], Agent]
#: call id -> the recorder of a call whose client consented to recording
RecorderFactory = Callable[[str], Recorder]
CONNECT_TIMEOUT_S = 20.0  # an answered call whose media never connected is abandoned
TASKS_CLOSE_TIMEOUT_S = 3.0  # a call's tasks get this long to end once cancelled


@dataclass(frozen=True, slots=True)
class CallSession:
    """Who the call belongs to (from the session token)."""

    session_id: str
    user_id: str
    persona_id: str


class Call:
    """Transport-independent part of a call."""

    transport = "base"

    def __init__(self, session: CallSession, sink: EventSink, agent_factory: AgentFactory,
                 recording: RecorderFactory | None = None) -> None:
        self.id = uuid.uuid4().hex
        self.log_prefix = f"call {self.id[:8]}"
        self.session = session
        self.events = sink
        self.track = AgentTrack(on_sent=self._on_sent)
        self._agent_factory = agent_factory
        self.persona_id = session.persona_id
        self.agent = agent_factory(session, session.persona_id, self.track, self.events.send)
        self.closed = asyncio.Event()
        self.started = time.monotonic()
        # cancelled and awaited by close(); the call's ids ride in each task's context (JSON logs)
        self.tasks = TaskRegistry(self.log_prefix,
                                  context=lambda: logfmt.call_context(self.id[:8], session.session_id))
        self._closing = False
        self.last_activity = self.started  # last inbound frame or client event (media_server.liveness)
        self._late_reported = 0
        self.messages = ClientMessages(self.log_prefix, self.events, self.handle_message,
                                       lambda _message: self.agent.interrupt(), self.tasks)
        # last: once made, a recorder must be finished by close(), so nothing above may fail after it
        self.recorder = recording(self.id) if recording is not None else None

    def _on_sent(self, pcm: np.ndarray, t: float) -> None:
        self.agent.on_far_end(pcm, t)
        if self.recorder is not None:
            self.recorder.outbound(pcm, t)
        metrics.FRAMES_SENT.inc()
        late = self.track.late_frames
        if late != self._late_reported:
            metrics.FRAMES_LATE.inc(late - self._late_reported)
            self._late_reported = late

    def feed(self, frames: list[np.ndarray], t: float) -> None:
        """Hand converted 10 ms frames to the agent; ``t`` is the arrival time of the first."""
        self.last_activity = t
        if self.recorder is not None:
            self.recorder.inbound(frames, t)
        for i, pcm in enumerate(frames):
            self.agent.on_frame(pcm, t + i * 0.01)

    def end(self, reason: str) -> None:
        """Close the call from one of its own tasks or callbacks (``close`` cancels them)."""
        if not self._closing:
            self.tasks.spawn(self.close(reason), "close")

    def on_client_message(self, raw: str | bytes) -> None:
        """A JSON event from the client (DataChannel or WebSocket): checked, then queued.

        Synchronous and cheap (:class:`ClientMessages`): the call's inbox consumer does the
        work, in order. Only urgent control (``interrupt``) acts at once.
        """
        self.last_activity = time.monotonic()
        self.messages.receive(raw)

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
            self.events.send(events.error("unknown_persona", f"unknown persona {persona_id!r}"))
            return
        old, self.agent, self.persona_id = self.agent, agent, str(persona_id)
        self.track.flush()
        await old.close()
        self.events.send(events.turn(agent.state))

    @property
    def connected(self) -> bool:
        """Media flows (WebRTC: the peer connection reached "connected")."""
        return True

    async def watchdog(self) -> None:
        """Close the call when its client is gone: it stopped pinging, or never connected."""
        while not self._closing:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            if self.messages.ping_timed_out(now):
                reason = "ping timeout"
            elif not self.connected and now - self.started > CONNECT_TIMEOUT_S:
                reason = "media never connected"
            else:
                continue
            logger.info("%s: %s; closing", self.log_prefix, reason)
            self.tasks.spawn(self.close(reason), "close")
            return

    async def close(self, reason: str = "hangup") -> None:
        """Idempotent teardown: agent, tasks, track, transport; waits for all of it.

        Whatever the agent's close does (raise, or be cancelled by a shutdown that lost
        patience), the tasks are still cancelled, the transport closed and ``closed`` set.
        """
        if self._closing:
            await self.closed.wait()
            return
        self._closing = True
        logger.info("%s: call ended: %s %s, %.1f s, reason: %s", self.log_prefix, self.transport,
                    self.persona_id, time.monotonic() - self.started, reason)
        metrics.CALLS_ENDED.labels(reason.split(":")[0][:40]).inc()
        try:
            await self.agent.close()
        except Exception:
            logger.exception("%s: agent close failed", self.log_prefix)
        finally:
            await self._release()

    async def _release(self) -> None:
        """The part of :meth:`close` that must happen: tasks, track, transport, ``closed``."""
        try:
            await self.tasks.cancel_all(TASKS_CLOSE_TIMEOUT_S)
            self.track.stop()
            if self.recorder is not None:  # no frames come any more: the file can be finished
                try:
                    await self.recorder.finish()
                except Exception:
                    logger.exception("%s: finishing the recording failed", self.log_prefix)
            try:
                await self.close_transport()
            except Exception:
                logger.exception("%s: closing the %s transport failed", self.log_prefix, self.transport)
        finally:
            self.closed.set()

    async def close_transport(self) -> None:
        """Transport-specific teardown (peer connection, socket)."""


class RtcCall(Call):
    """A call over an aiortc peer connection (browser, ``parley call``, WHIP)."""

    transport = "webrtc"

    def __init__(self, session: CallSession, agent_factory: AgentFactory, settings: Settings,
                 recording: RecorderFactory | None = None) -> None:
        self._dc_events = DataChannelEvents()
        super().__init__(session, self._dc_events, agent_factory, recording)
        self.pc = new_peer(settings)
        self._jitter_prefetch = settings.jitter_prefetch

    async def accept(self, sdp: str) -> str:
        """Apply the client's offer and return our answer SDP (ICE already gathered)."""
        PeerWiring(self.pc, self.tasks, self._dc_events, self.on_client_message, self.feed, self.end,
                   on_events_open=lambda: self._dc_events.send(events.turn(self.agent.state)))
        sending = PacketTrack(self.track)  # pre-encoded Opus: no per-frame thread hop in aiortc's sender
        answer = await answer_offer(self.pc, sdp, sending, self._jitter_prefetch)
        if negotiated_audio_codec(answer) == "opus":
            sending.use_opus()
        self.tasks.spawn(self.watchdog(), "watchdog")
        return answer

    @property
    def connected(self) -> bool:
        return self.pc.connectionState == "connected"

    async def close_transport(self) -> None:
        await self.pc.close()

