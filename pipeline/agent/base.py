"""The agent side of a call: DSP, turn taking, barge-in, and the reply task.

:class:`Agent` is transport-agnostic: the media server feeds it 10 ms inbound frames
(:meth:`Agent.on_frame`) and the client's event messages (:meth:`Agent.on_message`), and
gives it a :class:`Speaker` (the outbound track) and an ``emit`` callable (the event
channel). Subclasses decide what a reply is: ``pipeline.agent.echo.EchoAgent`` plays the
user's words back (the loopback diagnostic), ``pipeline.agent.voice.VoiceAgent`` runs
STT → LLM → TTS.

Barge-in is two-step so that a cough cannot cut the agent off but real speech stops it
within a frame or two: speech onset *pauses* playout at once; speech that lasts
``barge_in_min_ms`` *confirms* the interruption (flush, cancel, ``interrupted``); a burst
that ends before that resumes playout where it stopped.

A new reply replaces an unfinished one only after the cancelled one has finished (within
``REPLACE_TIMEOUT_S``): its last act is to record what the user heard, and that must land
in the conversation window before the next turn's user message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from parley import metrics
from parley.config import Settings
from pipeline import events
from pipeline.audio import RATE
from pipeline.dsp.base import FrameMeta
from pipeline.dsp.chain import make_chain
from pipeline.dsp.turn import TurnEvent, TurnEventKind
from pipeline.dsp.turn_model import PauseJudge, turn_detector, turn_model_for
from pipeline.tasks import TaskRegistry

logger = logging.getLogger(__name__)

REPLACE_TIMEOUT_S = 2.0  # a replaced reply gets this long to finish before the next starts
CLOSE_TIMEOUT_S = 2.0  # on close: replies record what was heard, background work lands

Emit = Callable[[dict[str, Any]], None]


class Playout(Protocol):
    """One queued piece of speech on the outbound track (``media_server.AgentTrack.play``)."""

    done: asyncio.Future[bool]  # True when fully sent, False if flushed
    started_at: float | None  # send time of its first frame

    @property
    def sent_s(self) -> float: ...
    @property
    def duration_s(self) -> float: ...


class Speaker(Protocol):
    """What the agent needs from the outbound track (``media_server.AgentTrack``)."""

    def play(self, pcm: np.ndarray) -> Playout: ...
    def flush(self) -> float: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    @property
    def paused(self) -> bool: ...
    @property
    def speaking(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class AgentContext:
    """Who the agent talks to, and the process-wide parts it may use."""

    settings: Settings
    user_id: str = "anonymous"
    session_id: str = ""
    services: Any = None  # pipeline.services.Services; None where no persona needs models


class Agent:
    """Base agent: owns the DSP chain, the turn detector and the single reply task."""

    #: set by transports that can send keypad digits (SIP: RFC 4733); None elsewhere
    send_dtmf: Callable[[str], None] | None = None

    def __init__(self, persona: Any, speaker: Speaker, emit: Emit, ctx: AgentContext) -> None:
        settings = ctx.settings
        self.persona = persona
        self.speaker = speaker
        self.emit = emit
        self.ctx = ctx
        self.settings = settings
        self.chain = make_chain(settings, ctx.session_id)
        self.turns = turn_detector(settings)
        self.state = "listening"
        self.last_meta: FrameMeta | None = None
        self.emotion: float | None = None
        self.plot_node: str | None = None
        self.log_prefix = f"{persona.id} {ctx.session_id[:8]}".strip()
        self.tasks = TaskRegistry(self.log_prefix)  # replies and background work
        self._reply: asyncio.Task[None] | None = None
        self._replies: list[asyncio.Task[None]] = []  # the current one and replaced, unfinished ones
        self._closed = False
        # the end-of-turn model (Smart Turn, shared by the process) on each pause; None = silence + transcript
        self.pause_judge = PauseJudge(turn_model_for(settings, ctx.services), self.turns, self.tasks,
                                      self.log_prefix)
        # one turn, one transcript: a turn the user resumed is carried into the next one
        self._turn_audio: np.ndarray | None = None  # the last turn, while its reply may be retracted
        self._carry: np.ndarray | None = None  # a retracted turn's audio, to go before the next
        self._audible_at: float | None = None  # when the current reply was first heard
        self.turn_merged = False  # the turn being answered includes a retracted one
        self.floor_free = asyncio.Event()  # clear while the user is speaking (an onset included)
        self.floor_free.set()
        self.retracting = False  # the reply being cancelled is retracted, not barged in on

    # -- inputs -----------------------------------------------------------------
    def on_frame(self, pcm: np.ndarray, t: float) -> None:
        """One inbound 10 ms frame (48 kHz mono int16); hot path, synchronous."""
        clean, meta = self.chain.process(pcm, t)
        self.last_meta = meta
        turn_event = self.turns.push(clean, meta)
        if turn_event is not None:
            self._on_turn_event(turn_event)

    def on_dtmf(self, digit: str) -> None:
        """A keypad digit from the caller: reported as ``dtmf {digit}``; ``#`` ends the turn now."""
        self.emit(events.dtmf(digit))
        if digit == "#" and (ev := self.turns.end_turn()) is not None:
            self.interrupt()  # an unconfirmed onset may have paused the agent's playout
            self._on_turn_event(ev)

    def on_far_end(self, pcm: np.ndarray, t: float) -> None:
        """A frame the outbound track sent (the echo canceller's reference)."""
        self.chain.far_end(pcm, t)

    async def on_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "ping":
            self.emit(events.pong(message.get("t")))
        elif kind == "interrupt":
            self.interrupt()
        elif kind == "text" and isinstance(message.get("text"), str) and message["text"].strip():
            self.interrupt()
            self.start_reply(self.reply_to_text(message["text"].strip()[:2000]))
        elif kind == "settings":
            self.apply_settings(message)
        else:
            self._refuse("bad_event", f"unknown or incomplete event {kind!r}")

    def apply_settings(self, message: dict[str, Any]) -> None:
        """``settings {emotion?, plot_node?}``; a bad value is refused with an error event."""
        if "emotion" in message:
            emotion = message["emotion"]
            if isinstance(emotion, int | float) and not isinstance(emotion, bool) and 0 <= emotion <= 1:
                self.emotion = float(emotion)
            else:
                self._refuse("bad_setting", "emotion must be a number from 0 to 1")
        if "plot_node" in message:
            node = message["plot_node"]
            nodes = getattr(self.persona, "plot_nodes", {})
            if node is None or node in nodes:
                self.plot_node = node
            else:
                self._refuse("bad_setting", f"plot_node must be one of {sorted(nodes)}")

    def _refuse(self, code: str, message: str) -> None:
        self.emit(events.error(code, message))

    # -- turn taking --------------------------------------------------------------
    def _on_turn_event(self, ev: TurnEvent) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s: %s %s(speaking=%s, %s)", self.persona.id, ev.kind.value, ev.why and ev.why + " ",
                         self.speaker.speaking, self.last_meta)
        if ev.kind is TurnEventKind.SPEECH_START:
            if self.speaker.speaking:
                self.speaker.pause()
        elif ev.kind is TurnEventKind.SPEECH_CANCELLED:
            if self.speaker.paused:
                self.speaker.resume()
        elif ev.kind is TurnEventKind.SPEECH_CONFIRMED:
            self._resume_or_barge_in()
        elif ev.kind is TurnEventKind.PAUSE:
            self.pause_judge.on_event(ev)
        elif ev.kind is TurnEventKind.END_OF_TURN and ev.audio is not None:
            self._end_turn(ev.audio, ev.t)
        if self.turns.in_speech:
            self.floor_free.clear()
        else:
            self.floor_free.set()

    def _end_turn(self, audio: np.ndarray, t: float) -> None:
        """Answer the turn -- together with a turn the user resumed before hearing its reply."""
        self.turn_merged = self._carry is not None
        if self._carry is not None:
            audio = np.concatenate([self._carry, audio])
            self._carry = None
        self._turn_audio = audio
        self._audible_at = None
        self.retracting = False
        self.emit(events.end_of_turn(self.turn_merged, len(audio) / RATE))
        self.start_reply(self.reply_to_audio(audio, t))

    def _resume_or_barge_in(self) -> None:
        """The user speaks (confirmed) while a reply is pending or playing.

        If they were only pausing -- the reply has not been heard yet, or for less than
        ``turn_grace_ms`` -- the reply is retracted and their last turn is carried into
        this one, so the model hears the whole utterance once. Otherwise it is a barge-in.
        """
        busy = self.speaker.speaking or (self._reply is not None and not self._reply.done())
        grace = self.settings.turn_grace_ms / 1000
        heard_long = self._audible_at is not None and time.monotonic() - self._audible_at > grace
        if busy and self._turn_audio is not None and not heard_long:
            self._carry, self._turn_audio = self._turn_audio, None
            self.retracting = True
            self.emit(events.turn_resumed(self._audible_at is not None))
            if self._audible_at is None:  # nothing was heard: withdraw it without a fuss
                self._stop_reply()
                return
        self.interrupt()

    def at_rest(self) -> bool:
        """No reply running or playing and no retracted turn waiting: a reply started now
        (a speculative one) would be the next turn's whole answer."""
        return self._carry is None and not self.speaker.speaking and all(t.done() for t in self._replies)

    def _stop_reply(self) -> None:
        self.speaker.flush()
        if self._reply is not None:
            self._reply.cancel()
        self.set_state("listening")

    def interrupt(self) -> None:
        """Barge-in: stop speaking and thinking now; tell the client what was heard."""
        busy = self.speaker.speaking or (self._reply is not None and not self._reply.done())
        if not busy:
            return
        heard = self.heard_text()
        self.speaker.flush()
        if self._reply is not None:
            self._reply.cancel()
        metrics.INTERRUPTIONS.inc()
        self.emit(events.interrupted(heard))
        self.set_state("listening")

    def set_state(self, state: str) -> None:
        if state == "speaking" and self._audible_at is None:
            self._audible_at = time.monotonic()
        if state != self.state:
            self.state = state
            self.emit(events.turn(state))

    def start_reply(self, reply: Awaitable[None]) -> None:
        """Run ``reply`` as the one reply task (a new turn replaces an unfinished one).

        Synchronous (turn events come from the frame hot path): the replaced replies are
        cancelled here, and the new task waits for them before it starts ``reply``.
        """
        if self._closed:
            _discard(reply)
            return
        previous = [task for task in self._replies if not task.done()]
        for old in previous:
            old.cancel()
        task = self.tasks.spawn(self._run_reply(reply, previous), "reply")
        if task is None:
            _discard(reply)
            return
        # cancelled before its first step, the task never reaches the reply: close it then
        task.add_done_callback(lambda t: _discard(reply) if t.cancelled() else None)
        self._reply = task
        self._replies = [*previous, task]

    async def _run_reply(self, reply: Awaitable[None], previous: list[asyncio.Task[None]]) -> None:
        try:
            if previous and await self.tasks.wait(REPLACE_TIMEOUT_S, previous):
                logger.warning("%s: a replaced reply is still running after %.1f s; starting the next",
                               self.log_prefix, REPLACE_TIMEOUT_S)
        except asyncio.CancelledError:  # replaced in turn before it started
            _discard(reply)
            raise
        try:
            await reply
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("%s: reply failed", self.log_prefix)
            self.emit(events.error("reply_failed", str(exc)[:200]))
        finally:
            if asyncio.current_task() is self._reply and not self.speaker.speaking:
                self.set_state("listening")

    async def speak(self, pcm: np.ndarray) -> bool:
        """Play ``pcm`` and wait until it has been sent; False if it was flushed."""
        playout = self.speaker.play(pcm)
        self.set_state("speaking")
        return await playout.done

    # -- what subclasses define ---------------------------------------------------
    async def reply_to_audio(self, audio: np.ndarray, t_end: float) -> None:
        raise NotImplementedError

    async def reply_to_text(self, text: str) -> None:
        raise NotImplementedError

    def heard_text(self) -> str:
        """Text of the reply the user actually heard so far (for history and ``interrupted``)."""
        return ""

    async def close(self) -> None:
        """Cancel the replies, let them and background work finish (bounded), then cancel the rest."""
        self._closed = True
        self.chain.close()
        for task in self._replies:
            task.cancel()
        await self.tasks.wait(CLOSE_TIMEOUT_S)
        await self.tasks.cancel_all(1.0)


def _discard(reply: Awaitable[None]) -> None:
    """Close a reply coroutine that will never run, so Python does not warn it was never awaited."""
    if asyncio.iscoroutine(reply):
        reply.close()
