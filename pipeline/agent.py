"""The agent side of a call: DSP, turn taking, barge-in, and the reply task.

:class:`Agent` is transport-agnostic: the media server feeds it 10 ms inbound frames
(:meth:`Agent.on_frame`) and the client's event messages (:meth:`Agent.on_message`), and
gives it a :class:`Speaker` (the outbound track) and an ``emit`` callable (the event
channel). Subclasses decide what a reply is: :class:`EchoAgent` plays the user's words
back (the loopback diagnostic), ``pipeline.voice.VoiceAgent`` runs STT → LLM → TTS.

Barge-in is two-step so that a cough cannot cut the agent off but real speech stops it
within a frame or two: speech onset *pauses* playout at once; speech that lasts
``barge_in_min_ms`` *confirms* the interruption (flush, cancel, ``interrupted``); a burst
that ends before that resumes playout where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from parley import metrics
from parley.config import Settings
from pipeline.dsp.base import FrameMeta
from pipeline.dsp.chain import DspChain
from pipeline.dsp.turn import TurnDetector, TurnEvent, TurnEventKind

logger = logging.getLogger(__name__)

Emit = Callable[[dict[str, Any]], None]


class Playout(Protocol):
    done: asyncio.Future[bool]
    started_at: float | None
    sent_s: float
    duration_s: float


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

    def __init__(self, persona: Any, speaker: Speaker, emit: Emit, ctx: AgentContext) -> None:
        settings = ctx.settings
        self.persona = persona
        self.speaker = speaker
        self.emit = emit
        self.ctx = ctx
        self.settings = settings
        self.chain = DspChain(settings)
        self.turns = TurnDetector(
            eot_silence_ms=settings.eot_silence_ms, confirm_ms=settings.barge_in_min_ms
        )
        self.state = "listening"
        self.last_meta: FrameMeta | None = None
        self.emotion: float | None = None
        self.plot_node: str | None = None
        self._reply: asyncio.Task[None] | None = None
        self._closed = False

    # -- inputs -----------------------------------------------------------------
    def on_frame(self, pcm: np.ndarray, t: float) -> None:
        """One inbound 10 ms frame (48 kHz mono int16); hot path, synchronous."""
        clean, meta = self.chain.process(pcm, t)
        self.last_meta = meta
        turn_event = self.turns.push(clean, meta)
        if turn_event is not None:
            self._on_turn_event(turn_event)

    def on_far_end(self, pcm: np.ndarray, t: float) -> None:
        """A frame the outbound track sent (the echo canceller's reference)."""
        self.chain.far_end(pcm, t)

    async def on_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "ping":
            self.emit({"type": "pong", "t": message.get("t")})
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
        self.emit({"type": "error", "code": code, "message": message})

    # -- turn taking --------------------------------------------------------------
    def _on_turn_event(self, ev: TurnEvent) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s: %s (speaking=%s, %s)", self.persona.id, ev.kind.value, self.speaker.speaking,
                         self.last_meta)
        if ev.kind is TurnEventKind.SPEECH_START:
            if self.speaker.speaking:
                self.speaker.pause()
        elif ev.kind is TurnEventKind.SPEECH_CANCELLED:
            if self.speaker.paused:
                self.speaker.resume()
        elif ev.kind is TurnEventKind.SPEECH_CONFIRMED:
            self.interrupt()
        elif ev.kind is TurnEventKind.END_OF_TURN and ev.audio is not None:
            self.start_reply(self.reply_to_audio(ev.audio, ev.t))

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
        self.emit({"type": "interrupted", "heard_text": heard})
        self.set_state("listening")

    def set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.emit({"type": "turn", "state": state})

    def start_reply(self, reply: Awaitable[None]) -> None:
        """Run ``reply`` as the one reply task (a new turn replaces an unfinished one)."""
        if self._closed:
            if asyncio.iscoroutine(reply):
                reply.close()  # never awaited: close it so Python does not warn
            return
        if self._reply is not None and not self._reply.done():
            self._reply.cancel()
        self._reply = asyncio.create_task(self._run_reply(reply), name="agent-reply")

    async def _run_reply(self, reply: Awaitable[None]) -> None:
        try:
            await reply
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("%s: reply failed", self.persona.id)
            self.emit({"type": "error", "code": "reply_failed", "message": str(exc)[:200]})
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
        self._closed = True
        if self._reply is not None and not self._reply.done():
            self._reply.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._reply, timeout=2)


class EchoAgent(Agent):
    """Loopback diagnostic persona: after each user turn, play back what it heard.

    It exercises the whole media path (capture → server → turn taking → paced playout →
    browser) through the same outbound track and events the AI personas use.
    """

    async def reply_to_audio(self, audio: np.ndarray, t_end: float) -> None:
        metrics.TURNS.labels(self.persona.id).inc()
        self.emit({"type": "tts-start"})
        playout = self.speaker.play(audio)
        self.set_state("speaking")
        if await playout.done:
            self.emit({"type": "tts-end"})
            first = (playout.started_at or t_end) - t_end
            self.emit({"type": "metrics", "latency_ms": {"first_frame": round(first * 1000, 1)}})

    async def reply_to_text(self, text: str) -> None:
        self.emit({"type": "llm-done", "text": text})


def create_agent(persona: Any, speaker: Speaker, emit: Emit, ctx: AgentContext) -> Agent:
    """The agent for ``persona``: the loopback echo, or the voice agent (STT → LLM → TTS)."""
    if getattr(persona, "kind", "agent") == "echo":
        return EchoAgent(persona, speaker, emit, ctx)
    if ctx.services is None:
        raise RuntimeError(f"persona {persona.id!r} needs the model services, which are not loaded")
    from pipeline.voice import VoiceAgent  # loads model code only for AI personas

    return VoiceAgent(persona, speaker, emit, ctx)
