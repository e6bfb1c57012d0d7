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
import dataclasses
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from parley import metrics
from pipeline import usage
from pipeline.agent import Agent, AgentContext, Emit, Playout, Speaker
from pipeline.chunker import SentenceChunker
from pipeline.llm import LLM, Message
from pipeline.moderation import safe_reply
from pipeline.prompt import build_messages, generation_params, speech_speed
from pipeline.services import Services
from pipeline.stt import STT
from pipeline.tts import TTS
from pipeline.usage import budget_notice
from pipeline.window import open_window

logger = logging.getLogger(__name__)

INTERIM_EVERY_S = 0.4  # re-decode the growing utterance this often while the user talks
SPECULATE_AFTER_FRAMES = 6  # 60 ms of silence: decode the utterance as if it had ended


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
        # the conversation window: in Redis when configured, so the call can move nodes
        self.window = services.window or open_window(ctx.settings)
        self._background: set[asyncio.Task[Any]] = set()
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
        task = asyncio.create_task(self.stt.transcribe(self.turns.utterance(), final=True),
                                   name="stt-speculative")
        task.add_done_callback(self._hint_from_speculation)
        self._speculation = task

    def _hint_from_speculation(self, task: asyncio.Task[str]) -> None:
        """A finished sentence in the speculative transcript lets the turn end sooner."""
        if task is self._speculation and not task.cancelled() and task.exception() is None:
            self.turns.hint_transcript(task.result())

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
        history = await self.window.load(self.ctx.session_id)
        await self.window.append(self.ctx.session_id, Message("user", user_text))
        turn_usage: usage.Usage | None = None
        try:
            if not (await self.services.moderator.check_user(user_text)).allowed:
                await self._say(safe_reply(self.persona.name), timer)
            elif not await self.services.budget.check(self.ctx.user_id):
                await self._say(budget_notice(), timer)
            else:
                self._keep_memories(user_text)  # only words that passed moderation
                with usage.track() as turn_usage:
                    await self._converse(history, user_text, timer, turn_usage)
                await self.services.budget.charge(self.ctx.user_id, turn_usage)
        except asyncio.CancelledError:  # barge-in: history keeps only what was heard
            await self._remember_reply(self.heard_text())
            raise
        self._report(timer, turn_usage)

    async def _fill_dead_air(self, timer: TurnTimer) -> None:
        """Say the filler if the reply has not started ``filler_after_s`` after the turn.

        A slow or failing backend (and its fallback) must not leave the caller in silence:
        the filler is pre-synthesized, so it plays within a frame.
        """
        filler = self.services.filler
        delay = self.settings.filler_after_s - (time.monotonic() - timer.t_end)
        if filler is None or self.settings.filler_after_s <= 0:
            return
        await asyncio.sleep(max(0.0, delay))
        if "tts_first_audio" not in timer.marks and not self.speaker.speaking:
            self.speaker.play(filler)

    async def _converse(self, history: list[Message], user_text: str, timer: TurnTimer,
                        turn_usage: usage.Usage) -> None:
        messages = build_messages(
            self.persona, history, user_text, memories=await self._recall(user_text),
            budget_tokens=self.settings.prompt_budget_tokens, count_tokens=self.llm.count_tokens,
            emotion=self.emotion, plot_node=self.plot_node,
        )
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        reply: list[str] = []
        filler = asyncio.create_task(self._fill_dead_air(timer), name="dead-air filler")
        try:
            async with asyncio.TaskGroup() as group:
                writer = group.create_task(self._write(messages, pieces, reply, timer), name="llm")
                speaker = group.create_task(self._speak(pieces, timer, writer), name="tts")
        finally:
            filler.cancel()
        moderated = speaker.result()
        if turn_usage.total_tokens == 0:  # local models report no usage: count it here
            usage.record_tokens(sum(self.llm.count_tokens(m.content) for m in messages), len(reply))
        await self._finish_reply(self._spoken_text() if moderated else "".join(reply).strip())

    async def _say(self, text: str, timer: TurnTimer) -> None:
        """Speak a fixed line (a refusal or notice) as this turn's reply."""
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        for piece in (text, None):
            pieces.put_nowait(piece)
        await self._speak(pieces, timer, None)
        await self._finish_reply(text)

    async def _finish_reply(self, text: str) -> None:
        await self._remember_reply(text)
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
                for piece in filter(None, map(self._unlabelled, chunker.push(token))):
                    timer.mark("first_piece")
                    pieces.put_nowait(piece)
        finally:
            await stream.aclose()
        for piece in chunker.flush():
            timer.mark("first_piece")
            pieces.put_nowait(piece)
        pieces.put_nowait(None)

    async def _speak(self, pieces: asyncio.Queue[str | None], timer: TurnTimer,
                     writer: asyncio.Task[None] | None) -> bool:
        """Moderate, synthesize and queue each piece; a flagged piece ends the reply.

        Returns True if a piece was replaced by the persona's safe reply.
        """
        self._spoken = []
        speed = speech_speed(self.persona, self.emotion)
        last: Playout | None = None
        moderated = False
        while (text := await pieces.get()) is not None:
            if writer is not None and not (await self.services.moderator.check_reply(text)).allowed:
                writer.cancel()  # the rest of the reply likely continues the flagged thought
                text, moderated = safe_reply(self.persona.name), True
            last = await self._synthesize(text, speed, timer) or last
            if moderated:
                break
        if last is not None:
            await last.done
        first = self._spoken[0].playouts[0].started_at if self._spoken and self._spoken[0].playouts else None
        if first is not None:
            timer.mark("first_frame", first)
        return moderated

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

    def _unlabelled(self, piece: str) -> str:
        """Drop a leading "Socrates:" — small models copy the speaker labels of the prompt's
        example dialogue, and the persona should not announce itself."""
        label = f"{self.persona.name}:"
        return piece[len(label):].lstrip() if piece.startswith(label) else piece

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

    async def _remember_reply(self, text: str) -> None:
        if text:
            await self.window.append(self.ctx.session_id, Message("assistant", text))

    # -- long-term memory and the turn log ------------------------------------------
    async def _recall(self, user_text: str) -> list[str]:
        """Memories of this user relevant to what they said (none if the persona keeps none)."""
        memory = self.services.memory
        if memory is None or self.persona.memory_policy == "none":
            return []
        try:
            return await memory.recall(self.ctx.user_id, self.persona.id, user_text,
                                       budget_tokens=self.settings.memory_budget_tokens,
                                       count_tokens=self.llm.count_tokens)
        except Exception:
            logger.warning("%s: memory recall failed; answering without memories", self.persona.id,
                           exc_info=True)
            return []

    def _keep_memories(self, user_text: str) -> None:
        """Capture what is worth remembering of the user's words, off the reply's path."""
        memory, policy = self.services.memory, self.persona.memory_policy
        if memory is not None and policy != "none":
            self._spawn(memory.capture(self.ctx.user_id, self.persona.id, user_text,
                                       explicit_only=policy == "explicit"), "memory capture")

    def _log_turn(self, latency_ms: dict[str, float], turn_usage: usage.Usage | None) -> None:
        store = self.services.store
        if store is None:
            return
        counts = dataclasses.asdict(turn_usage) if turn_usage is not None else {}
        self._spawn(store.log_turn(self.ctx.session_id, self.ctx.user_id, self.persona.id,
                                   latency_ms=latency_ms, usage=counts), "turn log")
        self._spawn(store.touch_session(self.ctx.session_id), "session touch")

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        """Background work of this agent; failures are logged, never raised into the call."""
        task = asyncio.create_task(coro, name=f"{self.persona.id} {name}")
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("%s failed: %s", task.get_name(), task.exception())

    def _report(self, timer: TurnTimer, turn_usage: usage.Usage | None) -> None:
        stages = timer.stages_ms()
        for stage, ms in stages.items():
            metrics.STAGE_LATENCY.labels(stage).observe(ms / 1000)
        self.emit({"type": "metrics", "latency_ms": stages,
                   "late_frames": getattr(self.speaker, "late_frames", None)})
        self._log_turn(stages, turn_usage)

    async def close(self) -> None:
        for task in (self._interim, self._speculation):
            if task is not None:
                task.cancel()
        await super().close()
        if self._background:  # let the turn log and memory capture land
            await asyncio.wait(self._background, timeout=2)
