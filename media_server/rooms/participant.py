"""One person in a room: their leg (outbound mix, events, transport) and their pipeline.

:class:`Participant` is what every transport shares; :class:`RtcParticipant` adds an aiortc
peer, and ``media_server.rooms.ws_participant.WsParticipant`` the WebSocket fallback.

The inbound track is read by a task owned by the participant, converted to 10 ms frames,
pushed into the room mixer (unless muted) and run through the participant's own
:class:`SpeakerPipeline` synchronously — the same no-queue path a call uses. A participant
that stalls only empties its own jitter buffer; one that leaves, fails ICE or hangs up is
removed from the room by :meth:`RtcParticipant.close` (idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

import numpy as np

from media_server.client_messages import ClientMessages
from media_server.events import DataChannelEvents, EventSink
from media_server.rooms.tracks import MixTrack
from media_server.rtc_peer import PeerWiring, answer_offer, new_peer
from parley.config import Settings
from pipeline import events
from pipeline.agent.room import SpeakerPipeline
from pipeline.tasks import TaskRegistry

if TYPE_CHECKING:
    from media_server.rooms.room import Room

logger = logging.getLogger(__name__)

MAX_NAME = 40
STALL_S = 0.5  # no inbound audio for this long: the participant no longer holds the floor


def clean_name(raw: Any) -> str:
    """A display name: printable, trimmed, at most 40 characters; "guest" when empty."""
    name = " ".join(str(raw or "").split())[:MAX_NAME]
    return "".join(ch for ch in name if ch.isprintable()) or "guest"


class Participant:
    """Transport-independent part of a room participant."""

    transport = "base"

    def __init__(self, room: Room, name: str, settings: Settings, events: EventSink) -> None:
        self.id = uuid.uuid4().hex
        self.room = room
        self.name = clean_name(name)
        self.muted = False
        self.speaking = False
        self.out = MixTrack()
        self.events = events
        self.pipeline = SpeakerPipeline(self.id, self.name, settings, room.stt, room, room.turn_model,
                                        room.vocabulary)
        self.late_base = room.late_ticks
        self.last_frame_t = 0.0  # arrival of the latest inbound frame (monotonic)
        self.closed = asyncio.Event()
        self._closing = False
        self.log_prefix = f"room {room.id[:8]} {self.id[:8]}"
        self.tasks = TaskRegistry(self.log_prefix)
        self.messages = ClientMessages(self.log_prefix, events, self.handle_message,
                                       lambda _message: room.interrupt_agent(), self.tasks)

    def holds_floor(self, now: float) -> bool:
        """Mid-turn, and still sending: a peer that stalled mid-word must not silence the agent."""
        return (not self.muted and self.pipeline.turns.in_speech
                and now - self.last_frame_t < STALL_S)

    @property
    def late_frames(self) -> int:
        """Frames this participant got late (mixer ticks late since joining) or dropped."""
        return self.room.late_ticks - self.late_base + self.out.dropped

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "speaking": self.speaking, "muted": self.muted,
                "transport": self.transport, "late_frames": self.late_frames}

    def feed(self, frames: list[np.ndarray], t: float) -> None:
        """Converted 10 ms frames to the mixer and this person's pipeline (unless muted)."""
        self.last_frame_t = t
        if self.muted:
            return
        self.room.record(self.id, frames, t)  # kept only in a recorded room, with this person's consent
        for i, pcm in enumerate(frames):
            self.room.mixer.push(self.id, pcm)
            self.pipeline.on_frame(pcm, t + i * 0.01)

    def on_message(self, raw: str | bytes) -> None:
        """A JSON event from this participant: the same intake as a call's (checked, queued)."""
        self.messages.receive(raw)

    async def handle_message(self, message: dict[str, Any]) -> None:
        """One checked event, in arrival order (the intake's consumer calls this)."""
        kind = message["type"]
        if kind == "ping":
            self.events.send(events.pong(message.get("t")))
        elif kind == "mute":
            self.room.set_muted(self, message.get("on", True))
        elif kind == "text" and message.get("text", "").strip():
            self.room.transcript(self.pipeline, message["text"].strip()[:2000], True)
        else:
            self.events.send(events.error("bad_event", f"unknown or incomplete event {kind!r}"))

    async def _watchdog(self) -> None:
        while not self._closing:
            await asyncio.sleep(1.0)
            if self.messages.ping_timed_out(time.monotonic()):
                self.hang_up("ping timeout")
                return

    async def close(self, reason: str = "left") -> None:
        """Leave the room and tear the leg down; idempotent, waits for all of it."""
        if self._closing:
            await self.closed.wait()
            return
        self._closing = True
        logger.info("%s: leaving (%s)", self.log_prefix, reason)
        self.room.leave(self)
        await self.tasks.cancel_all(3.0)
        await self.pipeline.close()
        self.out.stop()
        with contextlib.suppress(Exception):
            await self.close_transport()
        self.closed.set()

    async def close_transport(self) -> None:
        """Transport-specific teardown."""

    def hang_up(self, reason: str) -> None:
        """Leave from one of the participant's own tasks or callbacks (``close`` cancels them)."""
        if not self._closing:
            self.tasks.spawn(self.close(reason), "close")


class RtcParticipant(Participant):
    """A room participant connected with an aiortc peer (browser, headless client, WHIP)."""

    transport = "webrtc"

    def __init__(self, room: Room, name: str, settings: Settings) -> None:
        self._dc_events = DataChannelEvents()
        super().__init__(room, name, settings, self._dc_events)
        self.pc = new_peer(settings)
        self._jitter_prefetch = settings.jitter_prefetch

    async def accept(self, sdp: str) -> str:
        """Apply the offer, answer with the mix track; ICE is gathered by the time it returns."""
        PeerWiring(self.pc, self.tasks, self._dc_events, self.on_message, self.feed, self.hang_up)
        answer = await answer_offer(self.pc, sdp, self.out, self._jitter_prefetch)
        self.tasks.spawn(self._watchdog(), "watchdog")
        return answer

    async def close_transport(self) -> None:
        await self.pc.close()

