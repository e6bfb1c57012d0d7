"""The pipeline side of a multi-party room: one listener per person, one agent for all.

:class:`SpeakerPipeline` runs what a call runs on its caller — DSP (AEC against the exact
mix that person hears), VAD, turn taking with the same end-of-turn model on each pause
(:mod:`pipeline.dsp.turn_model`) and STT — but for one participant of a room, so
every transcript is attributed before anything is mixed. It reports to the room through
:class:`RoomHooks`.

:class:`RoomAgent` is the persona as a participant: the room hands it every final
transcript with its speaker; the room's :class:`pipeline.agent.floor.Floor` says whether it is
being addressed; if so it answers through the ordinary voice-agent reply path, with the
speaker's name in the history ("Ann: what is virtue?"), so the model knows who said what.
Barge-in comes from any participant's turn events (:meth:`RoomAgent.floor_event`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from parley.config import Settings
from pipeline.agent.base import AgentContext, Emit, Speaker
from pipeline.agent.floor import Floor, Verdict, addressed_prompt, parse_yes, spoken_name
from pipeline.agent.voice import VoiceAgent, next_interim_after
from pipeline.backends.base import STT, GenerationParams, Message, Vocabulary
from pipeline.dsp.chain import DspChain
from pipeline.dsp.turn import TurnEvent, TurnEventKind
from pipeline.dsp.turn_model import PauseJudge, TurnModel, turn_detector
from pipeline.tasks import TaskRegistry

logger = logging.getLogger(__name__)

#: a room shares one Whisper among several speakers: interims sparser than in a call, and
#: each speaker's at most ``INTERIM_DUTY`` of the thread (``next_interim_after``)
INTERIM_EVERY_S = 1.0


def room_vocabulary(persona_name: str) -> Vocabulary:
    """What every room speaker is transcribed with: the agent's name as people say it.

    The agent answers only when named, and Whisper writes unfamiliar names as familiar
    words; participants' names are left out (each extra name weakens the bias toward the
    others, measured on tiny.en: docs/architecture.md, Rooms).
    """
    return Vocabulary((spoken_name(persona_name),))


class RoomHooks(Protocol):
    """What a room hears from each participant's pipeline."""

    def turn_event(self, pipeline: SpeakerPipeline, event: TurnEvent) -> None: ...
    def transcript(self, pipeline: SpeakerPipeline, text: str, final: bool) -> None: ...


class SpeakerPipeline:
    """DSP, turn taking and STT of one room participant (synchronous per frame)."""

    def __init__(self, participant_id: str, name: str, settings: Settings, stt: STT | None,
                 hooks: RoomHooks, turn_model: TurnModel | None = None,
                 vocabulary: Vocabulary | None = None) -> None:
        self.participant_id = participant_id
        self.name = name
        self.chain = DspChain(settings)
        self.turns = turn_detector(settings)
        self.stt = stt
        self.vocabulary = vocabulary  # the names to bias transcription toward (the agent's)
        self.hooks = hooks
        log_prefix = f"room participant {participant_id[:8]}"
        self.tasks = TaskRegistry(log_prefix)
        # the end-of-turn model on each pause, as in a call (shared model, per-speaker state)
        self.pause_judge = PauseJudge(turn_model, self.turns, self.tasks, log_prefix)
        self._last_interim = 0.0
        self._interim_every = INTERIM_EVERY_S  # grows when decodes are slow
        self._interim: asyncio.Task[None] | None = None
        self.turn_started = 0.0  # when the current (or last) utterance began (monotonic)

    def on_frame(self, pcm: np.ndarray, t: float) -> None:
        """One inbound 10 ms frame of this participant (hot path)."""
        clean, meta = self.chain.process(pcm, t)
        event = self.turns.push(clean, meta)
        if event is not None:
            if event.kind is TurnEventKind.SPEECH_START:
                self.turn_started = event.t
            self.pause_judge.on_event(event)
            self.hooks.turn_event(self, event)
            if event.kind is TurnEventKind.END_OF_TURN and event.audio is not None:
                self.tasks.spawn(self._final(event.audio), "stt-final")
        elif self.turns.in_speech and meta.is_speech and t - self._last_interim >= self._interim_every:
            if self.stt is not None and (self._interim is None or self._interim.done()):
                self._last_interim = t
                self._interim = self.tasks.spawn(self._interim_transcript(), "stt-interim")

    def on_far_end(self, pcm: np.ndarray, t: float) -> None:
        """The exact mix this participant was sent: the echo canceller's reference."""
        self.chain.far_end(pcm, t)

    async def _interim_transcript(self) -> None:
        at, audio = self.turns.position(), self.turns.utterance()
        if audio.size < 9600 or self.stt is None:
            return
        started = time.monotonic()
        text = await self.stt.transcribe(audio, final=False, vocabulary=self.vocabulary)
        self._interim_every = next_interim_after(INTERIM_EVERY_S, time.monotonic() - started)
        if text and self.turns.in_speech:
            self.turns.hint_transcript(text, at)
            self.hooks.transcript(self, text, False)

    async def _final(self, audio: np.ndarray) -> None:
        if self.stt is None:
            return
        if self._interim is not None:
            self._interim.cancel()
        text = (await self.stt.transcribe(audio, final=True, vocabulary=self.vocabulary)).strip()
        if text:
            self.hooks.transcript(self, text, True)

    async def close(self) -> None:
        await self.tasks.cancel_all(2.0)


class RoomAgent(VoiceAgent):
    """A persona taking part in a room: answers when the floor policy says it is addressed.

    It has no microphone of its own (``on_frame`` is never called); it hears the room
    through :meth:`hear` (attributed final transcripts) and :meth:`floor_event` (everyone's
    turn taking, for barge-in). Rooms have no single user, so nothing is captured into or
    recalled from a user's long-term memory, and the turn log is the room transcript.
    """

    def __init__(self, persona: Any, speaker: Speaker, emit: Emit, ctx: AgentContext, policy: str,
                 floor_free: Callable[[], bool]) -> None:
        super().__init__(persona, speaker, emit, ctx)
        self.floor = Floor(policy, [persona.name], follow_up_s=ctx.settings.room_follow_up_s)
        self._floor_free = floor_free
        self.activations = 0  # replies started: the bench's false-activation count

    # -- what the room tells it -------------------------------------------------------
    def floor_event(self, event: TurnEvent) -> None:
        """A participant's turn event: pause on onset, resume on a cough, stop on speech."""
        if event.kind is TurnEventKind.SPEECH_START and self.speaker.speaking:
            self.speaker.pause()
        elif event.kind is TurnEventKind.SPEECH_CANCELLED and self.speaker.paused and self._floor_free():
            self.speaker.resume()
        elif event.kind is TurnEventKind.SPEECH_CONFIRMED and self.state == "speaking":
            self.interrupt()

    def hear(self, participant_id: str, speaker: str, text: str, started: float | None = None) -> None:
        """A final transcript from the room; answer it if the floor policy says so.

        ``started`` is when the utterance began: a follow-up begun within the window counts,
        however long the person spoke or the transcript took.
        """
        self.floor.someone_else_spoke(participant_id)
        verdict = self.floor.decide(participant_id, speaker, text, started or time.monotonic())
        if verdict is Verdict.ADDRESSED:
            self._answer_now(participant_id, speaker, text)
        elif verdict is Verdict.ASK_LLM:
            self.tasks.spawn(self._ask_then_answer(participant_id, speaker, text), "open-floor check")
        else:
            self.tasks.spawn(self.window.append(self.ctx.session_id, Message("user", f"{speaker}: {text}")),
                        "history")

    def _answer_now(self, participant_id: str, speaker: str, text: str) -> None:
        self.activations += 1
        self.interrupt()  # a newer question replaces an answer still queued or being written
        self.start_reply(self._answer(participant_id, speaker, text))

    async def _ask_then_answer(self, participant_id: str, speaker: str, text: str) -> None:
        messages = [Message(role, content) for role, content in addressed_prompt(self.persona.name, self.floor.recent)]
        answer: list[str] = []
        stream = self.llm.stream(messages, GenerationParams(max_tokens=3, temperature=0.0))
        try:
            async for token in stream:
                answer.append(token)
        finally:
            await stream.aclose()
        if parse_yes("".join(answer)):
            self._answer_now(participant_id, speaker, text)
        else:
            await self.window.append(self.ctx.session_id, Message("user", f"{speaker}: {text}"))

    async def _answer(self, participant_id: str, speaker: str, text: str) -> None:
        timer = self.turn_timer(time.monotonic())
        await self.within_budget(self.respond(f"{speaker}: {text}", timer), timer)
        self.floor.agent_replied(participant_id, self._spoken_text(), time.monotonic())

    # -- rooms have no single user --------------------------------------------------
    async def _recall(self, user_text: str) -> list[str]:
        return []

    def _keep_memories(self, user_text: str) -> None:
        return None

    def _log_turn(self, latency_ms: dict[str, float], turn_usage: Any) -> None:
        return None
