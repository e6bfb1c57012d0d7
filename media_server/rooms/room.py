"""A room: several people and one agent in one conversation, mixed on one 20 ms clock.

The room owns the :class:`Mixer`, the agent's :class:`RoomVoice`, its participants and one
clock task. Each tick (absolute ``time.monotonic()`` schedule, like the agent track) pulls
the agent's next 20 ms — only if it is mid-reply, or the floor is free — mixes, and hands
every participant its mix-minus, which is also that participant's echo-canceller reference.
The tick never awaits anything, so no participant can hold it up; ticks that fire more than
a frame late are counted (``late_ticks``: every participant got that frame late).

Events go to every participant; transcript events carry ``speaker`` and
``participant_id``. Every final transcript (people's and the agent's) goes to the
``on_transcript`` sink (Postgres). An empty room closes after ``room_idle_s``.

A room started with ``record_agent`` is *recorded*, per speaker: the agent's voice (what
the clock pulls, before mixing) goes to that recorder, and each participant must join with
their own recorder (their consent; :class:`ConsentRequired` otherwise), which gets their
decoded inbound audio while they are unmuted (:meth:`Room.record`). A participant's
recorder is finished when they leave, the agent's when the room closes; close waits for
those files (``media_server.recording``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np

from media_server.call import RecorderFactory
from media_server.recording import CLOSE_TIMEOUT_S, Recorder
from media_server.rooms.mixer import Mixer
from media_server.rooms.participant import Participant
from media_server.rooms.tracks import RoomVoice
from parley import metrics
from parley.config import Settings
from pipeline import events
from pipeline.agent.room import RoomAgent, SpeakerPipeline, room_vocabulary
from pipeline.backends.base import STT
from pipeline.dsp.turn import TurnEvent, TurnEventKind
from pipeline.dsp.turn_model import TurnModel
from pipeline.tasks import TaskRegistry

logger = logging.getLogger(__name__)

TICK_S = 0.02
RESYNC_S = 0.2  # further behind than this, restart the schedule instead of bursting ticks
AGENT_ID = "agent"

#: (room, voice, emit, floor_free) -> the persona as a participant, or None (no agent)
AgentMaker = Callable[["Room", RoomVoice, Callable[[dict[str, Any]], None], Callable[[], bool]],
                      RoomAgent | None]
#: (room id, participant id, speaker, text) -> stored
TranscriptSink = Callable[[str, str, str, str], Coroutine[Any, Any, None]]


class RoomFull(RuntimeError):
    """The room already has ``room_max_participants`` people."""


class ConsentRequired(RuntimeError):
    """The room is recorded and the participant did not consent to being recorded."""


class Room:
    """One multi-party conversation on this worker."""

    def __init__(self, persona_id: str, persona_name: str, policy: str, name: str, settings: Settings,
                 stt: STT | None, on_transcript: TranscriptSink | None = None,
                 turn_model: TurnModel | None = None) -> None:
        self.id = uuid.uuid4().hex
        self.persona_id = persona_id
        self.persona_name = persona_name
        self.policy = policy
        self.name = name
        self.settings = settings
        self.stt = stt
        self.turn_model = turn_model  # every participant's end-of-turn model (None: silence + transcript)
        self.vocabulary = room_vocabulary(persona_name)  # every speaker's STT bias: the agent's name
        self.mixer = Mixer()
        self.voice = RoomVoice()
        self.agent: RoomAgent | None = None
        self.participants: dict[str, Participant] = {}
        self.late_ticks = 0
        self.ticks = 0
        self._origin = time.monotonic()  # media time zero of every participant's outbound mix
        self.mix_seconds = 0.0  # CPU time spent in ticks (the bench reads it)
        self.closed = asyncio.Event()
        self._on_transcript = on_transcript
        self._idle: asyncio.TimerHandle | None = None
        self._closing = False
        self.log_prefix = f"room {self.id[:8]}"
        self.tasks = TaskRegistry(self.log_prefix)
        self.recorded = False  # set by start(): every participant must consent to recording
        self._recorders: dict[str, Recorder] = {}  # participant id -> their track's recorder
        self._agent_recorder: Recorder | None = None
        self._finishing = TaskRegistry(f"{self.log_prefix} recordings")  # outlives tasks' cancel

    # -- lifecycle ----------------------------------------------------------------------
    def start(self, make_agent: AgentMaker | None, record_agent: RecorderFactory | None = None) -> None:
        """Create the agent participant and start the clock (and the idle timer).

        ``record_agent``: the room is recorded (its creator consented); it makes the
        recorder of the room's voice (a room whose voice never speaks keeps no file).
        """
        if make_agent is not None:
            self.agent = make_agent(self, self.voice, self._agent_emit, self.floor_free)
        self.recorded = record_agent is not None
        if record_agent is not None:
            self._agent_recorder = record_agent(AGENT_ID)
        self.tasks.spawn(self._clock(), "mixer clock")
        self._arm_idle()

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = None
        if not self.participants and not self._closing:
            self._idle = asyncio.get_running_loop().call_later(
                self.settings.room_idle_s, lambda: self.tasks.spawn(self.close("idle"), "close"))

    async def close(self, reason: str = "ended") -> None:
        """End the room: every participant leaves, the agent stops; idempotent."""
        if self._closing:
            await self.closed.wait()
            return
        self._closing = True
        logger.info("%s: closing (%s)", self.log_prefix, reason)
        if self._idle is not None:
            self._idle.cancel()
        await asyncio.gather(*(p.close("room ended") for p in list(self.participants.values())),
                             return_exceptions=True)
        if self.agent is not None:
            await self.agent.close()
        await self.tasks.cancel_all(3.0)  # the clock too: nothing feeds the agent's recorder now
        self.voice.stop()
        if self._agent_recorder is not None:
            self._finish_recording(AGENT_ID, self._agent_recorder)
            self._agent_recorder = None
        late = await self._finishing.wait(CLOSE_TIMEOUT_S + 5.0)
        if late:
            logger.warning("%s: %d recordings did not finish in time", self.log_prefix, len(late))
        await self._finishing.cancel_all(1.0)
        self.closed.set()

    # -- membership -----------------------------------------------------------------------
    def join(self, participant: Participant, record: RecorderFactory | None = None) -> None:
        """Add ``participant``; ``record`` (their consent) makes the recorder of their voice.

        RoomFull if it is full or ended; ConsentRequired in a recorded room without ``record``.
        """
        if self._closing:
            raise RoomFull("the room has ended")
        if len(self.participants) >= self.settings.room_max_participants:
            raise RoomFull(f"the room already has {len(self.participants)} participants")
        if self.recorded and record is None:
            raise ConsentRequired("this room is recorded: join with consent to being recorded")
        for other in self.participants.values():  # the newcomer learns who is here
            participant.events.send(events.participant_joined(other.id, other.name))
        self.participants[participant.id] = participant
        self.mixer.add(participant.id)
        self.broadcast(events.participant_joined(participant.id, participant.name))
        if self.agent is not None:
            participant.events.send(events.attributed(events.turn(self.agent.state), self.persona_name, AGENT_ID))
        self._arm_idle()
        if self.recorded and record is not None:  # last: once made, leave() must finish it
            self._recorders[participant.id] = record(participant.id)

    def leave(self, participant: Participant) -> None:
        if self.participants.pop(participant.id, None) is None:
            return
        recorder = self._recorders.pop(participant.id, None)
        if recorder is not None:
            self._finish_recording(participant.id, recorder)
        self.mixer.remove(participant.id)
        self.broadcast(events.participant_left(participant.id, participant.name))
        self._arm_idle()

    def record(self, participant_id: str, frames: list[np.ndarray], t: float) -> None:
        """A participant's decoded 10 ms frames (arriving at ``t``) to their recorder, if any."""
        recorder = self._recorders.get(participant_id)
        if recorder is not None:
            recorder.inbound(frames, t)

    def _finish_recording(self, speaker_id: str, recorder: Recorder) -> None:
        self._finishing.spawn(recorder.finish(), f"finish {speaker_id[:8]}")

    def set_muted(self, participant: Participant, muted: bool) -> None:
        participant.muted = muted
        if muted:
            buffer = self.mixer.buffers.get(participant.id)
            if buffer is not None:
                buffer.clear()
        self.broadcast(events.muted(participant.id, muted))

    def describe(self) -> dict[str, Any]:
        return {
            "room_id": self.id, "persona": self.persona_id, "policy": self.policy, "name": self.name,
            "participants": [p.describe() for p in self.participants.values()],
            "agent": {"state": self.agent.state if self.agent is not None else "none"},
            "late_ticks": self.late_ticks, "ticks": self.ticks,
        }

    # -- events ---------------------------------------------------------------------------
    def broadcast(self, message: dict[str, Any]) -> None:
        for participant in self.participants.values():
            participant.events.send(message)

    def _agent_emit(self, message: dict[str, Any]) -> None:
        """The agent's events, attributed to it; its finished replies join the transcript."""
        message = events.attributed(message, self.persona_name, AGENT_ID)
        if message["type"] == "llm-done" and message.get("text"):
            self._store(AGENT_ID, self.persona_name, message["text"])
        self.broadcast(message)

    def turn_event(self, pipeline: SpeakerPipeline, ev: TurnEvent) -> None:
        """A participant's turn taking: speaking indicator, and barge-in on the agent."""
        participant = self.participants.get(pipeline.participant_id)
        if participant is None or ev.kind is TurnEventKind.PAUSE:  # a pause is not the end of speaking
            return
        speaking = ev.kind in (TurnEventKind.SPEECH_START, TurnEventKind.SPEECH_CONFIRMED)
        if speaking != participant.speaking:
            participant.speaking = speaking
            self.broadcast(events.speaking(participant.id, participant.name, speaking))
        if self.agent is not None:
            self.agent.floor_event(ev)

    def transcript(self, pipeline: SpeakerPipeline, text: str, final: bool) -> None:
        """An attributed transcript: to everyone, and (final) to the agent and the store."""
        said = events.stt_final(text) if final else events.stt_interim(text)
        self.broadcast(events.attributed(said, pipeline.name, pipeline.participant_id))
        if final:
            self._store(pipeline.participant_id, pipeline.name, text)
            if self.agent is not None:
                self.agent.hear(pipeline.participant_id, pipeline.name, text, pipeline.turn_started or None)

    def interrupt_agent(self) -> None:
        if self.agent is not None:
            self.agent.interrupt()

    def _store(self, participant_id: str, speaker: str, text: str) -> None:
        if self._on_transcript is not None:
            self.tasks.spawn(self._on_transcript(self.id, participant_id, speaker, text), "transcript")

    def floor_free(self) -> bool:
        """No person is in the middle of a turn (the agent may start speaking)."""
        now = time.monotonic()
        return not any(p.holds_floor(now) for p in self.participants.values())

    # -- the clock ------------------------------------------------------------------------
    async def _clock(self) -> None:
        t0 = self._origin = time.monotonic()
        n = 0
        while True:
            n += 1
            deadline = t0 + n * TICK_S
            now = time.monotonic()
            if deadline > now:
                await asyncio.sleep(deadline - now)
            else:
                if now - deadline > TICK_S:
                    self.late_ticks += 1
                    metrics.FRAMES_LATE.inc()
                if now - deadline > RESYNC_S:  # the loop stalled: skip the missed slots
                    n = round((now - t0) / TICK_S)
                    deadline = t0 + n * TICK_S
            self.tick(deadline)

    def tick(self, t: float) -> None:
        """One 20 ms step of the room (synchronous; the clock calls it)."""
        start = time.perf_counter()
        self.ticks += 1
        agent = self.voice.pull(t, self.floor_free())
        if agent is not None and self._agent_recorder is not None:
            self._agent_recorder.outbound(agent, t)
        result = self.mixer.tick(agent)
        slot = round((t - self._origin) / TICK_S)  # media time: skipped slots stay gaps
        for pid, pcm in result.outputs.items():
            participant = self.participants.get(pid)
            if participant is not None:
                participant.out.deliver(slot, pcm)
                participant.pipeline.on_far_end(pcm, t)
        self.mix_seconds += time.perf_counter() - start


class RoomManager:
    """The rooms of one worker: create, find, end; all closed at shutdown."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rooms: dict[str, Room] = {}

    def add(self, room: Room, make_agent: AgentMaker | None, record_agent: RecorderFactory | None = None) -> Room:
        """Register and start ``room`` (``record_agent``: it is recorded, see :meth:`Room.start`)."""
        self.rooms[room.id] = room
        room.start(make_agent, record_agent)
        room.tasks.spawn(self._forget_when_closed(room), "registry")
        return room

    async def _forget_when_closed(self, room: Room) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await room.closed.wait()
        self.rooms.pop(room.id, None)

    async def close_all(self, timeout: float = 5.0) -> None:
        rooms = list(self.rooms.values())
        if rooms:
            await asyncio.wait([asyncio.create_task(r.close("server shutdown")) for r in rooms], timeout=timeout)
        self.rooms.clear()
