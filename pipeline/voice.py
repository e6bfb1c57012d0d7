"""The voice agent: user speech → STT → prompt → LLM tokens → chunker → TTS → track.

Latency comes from overlap, not from fast stages: the LLM streams tokens to the client
while the chunker cuts the first clause off for TTS, and TTS audio is queued on the track
chunk by chunk while the LLM is still writing the rest. Producer (LLM) and consumer (TTS)
run as two tasks joined by a queue of text pieces, so neither waits for the other.

What the user actually *heard* is tracked per spoken piece (how many samples of it the
track sent), so a barge-in records only that prefix in the conversation history.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from parley import metrics
from pipeline.agent import Agent, AgentContext, Emit, Playout, Speaker
from pipeline.chunker import SentenceChunker
from pipeline import usage
from pipeline.llm import LLM, Message
from pipeline.moderation import safe_reply
from pipeline.prompt import build_messages, generation_params, speech_speed
from pipeline.services import Services
from pipeline.stt import STT
from pipeline.tts import TTS
from pipeline.usage import budget_notice

logger = logging.getLogger(__name__)

INTERIM_EVERY_S = 0.4  # re-decode the growing utterance this often while the user talks
SPECULATE_AFTER_FRAMES = 10  # 100 ms of silence: decode the utterance as if it had ended
HISTORY_TURNS = 20  # kept in memory; the prompt budget decides how many reach the LLM


#: stage -> (start mark, end mark). Stages follow each other, so they add up to the time
#: from end of turn to the first reply audio; ``first_frame`` is that total, server side.
SPANS = {
    "stt": ("t_end", "stt"),
    "llm_first_token": ("stt", "llm_first_token"),
    "llm_first_piece": ("llm_first_token", "first_piece"),
    "tts_first_audio": ("first_piece", "tts_first_audio"),
    "first_frame": ("t_end", "first_frame"),
}


@dataclass
class TurnTimer:
    """Monotonic milestones of one turn, reported as per-stage durations (ms)."""

    t_end: float  # end of turn detected (or text received)
    marks: dict[str, float] = field(default_factory=dict)

    def mark(self, name: str, t: float | None = None) -> None:
        self.marks.setdefault(name, time.monotonic() if t is None else t)

    def stages_ms(self) -> dict[str, float]:
        m, out = self.marks, {}
        points = {"t_end": self.t_end, **m}
        for stage, (a, b) in SPANS.items():
            if a in points and b in points:  # frames are stamped ahead by up to 10 ms: clamp
                out[stage] = round(max(0.0, points[b] - points[a]) * 1000, 1)
        return out


@dataclass(slots=True)
class SpokenPiece:
    text: str
    playouts: list[Playout] = field(default_factory=list)

    def heard_fraction(self) -> float:
        total = sum(p.duration_s for p in self.playouts)
        return sum(p.sent_s for p in self.playouts) / total if total else 0.0


class VoiceAgent(Agent):
    """An AI persona: the configured STT, LLM and TTS backends behind the base turn-taking."""

    def __init__(self, persona: Any, speaker: Speaker, emit: Emit, ctx: AgentContext) -> None:
        super().__init__(persona, speaker, emit, ctx)
        services: Services = ctx.services
        self.services = services
        self.stt: STT = services.stt
        self.llm: LLM = services.llm
        self.tts: TTS = services.tts
        self.history: list[Message] = []
        self._spoken: list[SpokenPiece] = []
        self._interim: asyncio.Task[None] | None = None
        self._last_interim = 0.0
        self._silent_frames = 0
        self._speculation: asyncio.Task[str] | None = None  # cancelled once the user speaks again
        # a remote STT bills every request, and discarded guesses would cost too
        self._speculative = ctx.settings.stt == "local"

    # -- transcripts while the user talks ------------------------------------------
    def on_frame(self, pcm: np.ndarray, t: float) -> None:
        super().on_frame(pcm, t)
        if not self.turns.in_speech:
            return
        speaking = self.last_meta is not None and self.last_meta.is_speech
        self._silent_frames = 0 if speaking else self._silent_frames + 1
        if speaking and self._speculation is not None:
            self._speculation.cancel()  # more words are coming: the guess is stale
            self._speculation = None
        if self._silent_frames == SPECULATE_AFTER_FRAMES and self._speculative:
            self._speculate()
        elif speaking and t - self._last_interim >= INTERIM_EVERY_S:
            if self._interim is None or self._interim.done():
                self._last_interim = t
                self._interim = asyncio.create_task(self._interim_transcript(), name="stt-interim")

    def _speculate(self) -> None:
        """The user paused: transcribe now, so the final transcript is ready at end of turn.

        End of turn needs a few hundred ms more silence; decoding during that wait takes
        STT off the critical path. If the user speaks again the result is discarded.
        """
        self._speculation = asyncio.create_task(
            self.stt.transcribe(self.turns.utterance(), final=True), name="stt-speculative"
        )

    async def _interim_transcript(self) -> None:
        audio = self.turns.utterance()
        if audio.size < 4800:
            return
        text = await self.stt.transcribe(audio, final=False)
        if text and self.turns.in_speech:
            self.emit({"type": "stt-interim", "text": text})
            hint = getattr(self.turns, "hint_transcript", None)
            if hint is not None:
                hint(text)

    # -- a turn ---------------------------------------------------------------------
    async def reply_to_audio(self, audio: np.ndarray, t_end: float) -> None:
        timer = TurnTimer(t_end)
        self.set_state("thinking")
        text = await self._final_transcript(audio)
        timer.mark("stt")
        if not text:
            logger.debug("%s: no words in the utterance", self.persona.id)
            return
        self.emit({"type": "stt-final", "text": text})
        await self.respond(text, timer)

    async def _final_transcript(self, audio: np.ndarray) -> str:
        """The speculative transcript if no speech came after it, else a fresh decode."""
        speculation, self._speculation = self._speculation, None
        self._silent_frames = 0
        if speculation is not None and not speculation.cancelled():
            return await speculation
        return await self.stt.transcribe(audio, final=True)

    async def reply_to_text(self, text: str) -> None:
        timer = TurnTimer(time.monotonic())
        timer.mark("stt")
        self.emit({"type": "stt-final", "text": text})
        await self.respond(text, timer)

    async def respond(self, user_text: str, timer: TurnTimer) -> None:
        """Stream a reply to ``user_text``: tokens to the client, speech to the track.

        The user's words are moderated and the budget checked first; either refusal is
        spoken in the persona's voice instead of calling the model.
        """
        metrics.TURNS.labels(self.persona.id).inc()
        self.set_state("thinking")
        self.history.append(Message("user", user_text))
        try:
            if not (await self.services.moderator.check_user(user_text)).allowed:
                await self._say(safe_reply(self.persona.name), timer)
            elif not await self.services.budget.check(self.ctx.user_id):
                await self._say(budget_notice(), timer)
            else:
                with usage.track() as turn_usage:
                    await self._converse(user_text, timer)
                await self.services.budget.charge(self.ctx.user_id, turn_usage)
        except asyncio.CancelledError:  # barge-in: history keeps only what was heard
            self._remember_reply(self.heard_text())
            raise
        self._report(timer)

    async def _converse(self, user_text: str, timer: TurnTimer) -> None:
        messages = build_messages(
            self.persona, self.history[:-1], user_text, budget_tokens=self.settings.prompt_budget_tokens,
            count_tokens=self.llm.count_tokens, emotion=self.emotion, plot_node=self.plot_node,
        )
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        reply: list[str] = []
        async with asyncio.TaskGroup() as group:
            writer = group.create_task(self._write(messages, pieces, reply, timer), name="llm")
            group.create_task(self._speak(pieces, timer, writer), name="tts")
        moderated = writer.cancelled()
        self._finish_reply(self._spoken_text() if moderated else "".join(reply).strip())

    async def _say(self, text: str, timer: TurnTimer) -> None:
        """Speak a fixed line (a refusal or notice) as this turn's reply."""
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        for piece in (text, None):
            pieces.put_nowait(piece)
        await self._speak(pieces, timer, None)
        self._finish_reply(text)

    def _finish_reply(self, text: str) -> None:
        self._remember_reply(text)
        self.emit({"type": "llm-done", "text": text})
        if self._spoken:
            self.emit({"type": "tts-end"})

    async def _write(self, messages: list[Message], pieces: asyncio.Queue[str | None],
                     reply: list[str], timer: TurnTimer) -> None:
        chunker = SentenceChunker()
        stream = self.llm.stream(messages, generation_params(self.persona, self.emotion))
        try:
            async for token in stream:
                timer.mark("llm_first_token")
                reply.append(token)
                self.emit({"type": "llm-token", "token": token})
                for piece in chunker.push(token):
                    timer.mark("first_piece")
                    pieces.put_nowait(piece)
        finally:
            await stream.aclose()
        for piece in chunker.flush():
            timer.mark("first_piece")
            pieces.put_nowait(piece)
        pieces.put_nowait(None)

    async def _speak(self, pieces: asyncio.Queue[str | None], timer: TurnTimer,
                     writer: asyncio.Task[None] | None) -> None:
        """Moderate, synthesize and queue each piece; a flagged piece ends the reply."""
        self._spoken = []
        speed = speech_speed(self.persona, self.emotion)
        last: Playout | None = None
        while (text := await pieces.get()) is not None:
            if writer is not None and not (await self.services.moderator.check_reply(text)).allowed:
                writer.cancel()  # the rest of the reply likely continues the flagged thought
                last = await self._synthesize(safe_reply(self.persona.name), speed, timer) or last
                break
            last = await self._synthesize(text, speed, timer) or last
        if last is not None:
            await last.done
        first = self._spoken[0].playouts[0].started_at if self._spoken and self._spoken[0].playouts else None
        if first is not None:
            timer.mark("first_frame", first)

    async def _synthesize(self, text: str, speed: float, timer: TurnTimer) -> Playout | None:
        spoken = SpokenPiece(text)
        self._spoken.append(spoken)
        stream = self.tts.synthesize(text, voice=self.persona.voice, speed=speed)
        try:
            async for pcm in stream:
                spoken.playouts.append(self.speaker.play(pcm))
                if "tts_first_audio" not in timer.marks:
                    timer.mark("tts_first_audio")
                    self.emit({"type": "tts-start"})
                    self.set_state("speaking")
        finally:
            await stream.aclose()
        return spoken.playouts[-1] if spoken.playouts else None

    def _spoken_text(self) -> str:
        return " ".join(piece.text for piece in self._spoken)

    def heard_text(self) -> str:
        words: list[str] = []
        for piece in self._spoken:
            fraction = piece.heard_fraction()
            piece_words = piece.text.split()
            words += piece_words[: int(len(piece_words) * fraction + 1e-9)]
            if fraction < 1.0:
                break
        return " ".join(words)

    def _remember_reply(self, text: str) -> None:
        if text:
            self.history.append(Message("assistant", text))
        del self.history[: max(0, len(self.history) - 2 * HISTORY_TURNS)]

    def _report(self, timer: TurnTimer) -> None:
        stages = timer.stages_ms()
        for stage, ms in stages.items():
            metrics.STAGE_LATENCY.labels(stage).observe(ms / 1000)
        self.emit({"type": "metrics", "latency_ms": stages,
                   "late_frames": getattr(self.speaker, "late_frames", None)})

    async def close(self) -> None:
        for task in (self._interim, self._speculation):
            if task is not None:
                task.cancel()
        await super().close()
