"""The voice agent: user speech → STT → prompt → LLM tokens → chunker → TTS → track.

Latency comes from overlap, not from fast stages: the LLM streams tokens to the client
while the chunker cuts the first clause off for TTS, and TTS audio is queued on the track
chunk by chunk while the LLM is still writing the rest. Producer (LLM) and consumer (TTS)
run as two tasks joined by a queue of text pieces, so neither waits for the other.

What the user actually *heard* is tracked per spoken piece (how many samples of it the
track sent), so a barge-in records only that prefix in the conversation history.

A turn that cannot be answered — a stage fails, or the reply has not started
``PARLEY_FALLBACK_MS`` after the user's turn — gets a spoken apology instead
(``pipeline.agent.fallback``). Memory recall and the turn log are allowed to fail: the reply
goes on without memories, and the log waits out a short Postgres outage (``storage.retry``).

The reply can start in the user's pause, before the end of turn, behind a gate that holds
everything visible until the end of turn adopts it (``pipeline.agent.speculation``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from parley import deps, metrics
from pipeline import events, usage
from pipeline.agent import fallback, speculation
from pipeline.agent.base import Agent, AgentContext, Emit, Playout, Speaker
from pipeline.agent.fallback import TurnBudget
from pipeline.agent.speculation import SpeculativeReply
from pipeline.backends import resilience
from pipeline.backends.base import LLM, STT, TTS, Message
from pipeline.chunker import SentenceChunker
from pipeline.dsp.turn import TurnEvent, TurnEventKind
from pipeline.memory import VectorStoreUnavailable
from pipeline.moderation import safe_reply
from pipeline.prompt import build_messages, generation_params, speech_speed
from pipeline.services import APOLOGY_TEXT, Services
from pipeline.usage import budget_notice
from pipeline.window import open_window
from storage.retry import write_with_retry

logger = logging.getLogger(__name__)

INTERIM_EVERY_S = 0.4  # re-decode the growing utterance this often while the user talks ...
#: ... but give interims at most this share of the STT thread: when the user stops, the
#: end-of-turn decode waits behind the interim still running (on a 2-core machine where a
#: decode took 0.5 s, interims every 0.4 s put 164 ms of STT after the end of turn, p50)
INTERIM_DUTY = 0.25


def next_interim_after(floor_s: float, took_s: float) -> float:
    """Seconds before the next interim: ``floor_s``, or longer when the last one took more
    than ``INTERIM_DUTY`` of that (calls and room speakers alike)."""
    return max(floor_s, took_s / INTERIM_DUTY)


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
#: marks that show the reply has started: the turn's fallback deadline no longer applies
STARTED = ("llm_first_token", "tts_first_audio")
#: stage -> the mark it leaves when it did its part of a turn
STAGE_MARKS = (("stt", "stt"), ("llm", "llm_first_token"), ("tts", "tts_first_audio"))


@dataclass
class TurnTimer:
    """Monotonic milestones of one turn, reported as per-stage durations (ms)."""

    t_end: float  # end of turn detected (or text received)
    marks: dict[str, float] = field(default_factory=dict)
    budget: TurnBudget | None = None  # the reply's start deadline (pipeline.agent.fallback)

    def mark(self, name: str, t: float | None = None) -> None:
        if name in STARTED and name not in self.marks and self.budget is not None:
            self.budget.started()
        self.marks.setdefault(name, time.monotonic() if t is None else t)

    def stage(self) -> str:
        """The stage the turn is in: the first whose mark is missing."""
        return next((stage for stage, mark in STAGE_MARKS if mark not in self.marks), "tts")

    def stages_ms(self) -> dict[str, float]:
        """Work done before the end of turn (a speculative reply) cost the turn nothing."""
        out: dict[str, float] = {}
        points = {"t_end": self.t_end, **{k: max(t, self.t_end) for k, t in self.marks.items()}}
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
        self._spoken: list[SpokenPiece] = []
        self._reply_recorded = False  # this turn's reply is in the window: a late cancel adds nothing
        self._interim: asyncio.Task[None] | None = None
        self._last_interim = 0.0
        self._interim_every = INTERIM_EVERY_S  # grows when decodes are slow (INTERIM_DUTY)
        self._silent_frames = 0
        self._speculation: asyncio.Task[str] | None = None  # cancelled once the user speaks again
        # the whole reply, started on the speculative transcript (pipeline.agent.speculation)
        self._next_reply: SpeculativeReply[TurnTimer] | None = None
        self._paused = False  # PAUSE came and no speech since
        self._reply_ahead = speculation.enabled(ctx.settings)
        # a remote STT bills every request, and discarded guesses would cost too
        self._speculative = ctx.settings.stt == "local" or ctx.settings.speculative_reply == "1"
        self._emit_now = self.emit
        self.emit = self._emit_unless_held

    def _emit_unless_held(self, event: dict[str, Any]) -> None:
        """Events of a speculative reply wait for its adoption."""
        speculation.hold_or_run(functools.partial(self._emit_now, event))

    def set_state(self, state: str) -> None:
        speculation.hold_or_run(functools.partial(super().set_state, state))

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
        if speaking:
            self._paused = False
            self._drop_next_reply()  # and so is a reply to it
        if self._silent_frames == SPECULATE_AFTER_FRAMES and self._speculative:
            self._speculate()
        elif speaking and t - self._last_interim >= self._interim_every:
            if self._interim is None or self._interim.done():
                self._last_interim = t
                self._interim = self.tasks.spawn(self._interim_transcript(), "stt-interim")

    def _speculate(self) -> None:
        """The user paused: transcribe now, so the final transcript is ready at end of turn.

        End of turn needs a few hundred ms more silence; decoding during that wait takes
        STT off the critical path. If the user speaks again the result is discarded.
        """
        self._drop_next_reply()  # a new pause replaces a stale one
        self._paused = False  # its reply waits for this pause's PAUSE
        task = self.tasks.spawn(self.stt.transcribe(self.turns.utterance(), final=True), "stt-speculative")
        if task is not None:
            task.add_done_callback(self._on_speculative_transcript)
        self._speculation = task

    def _on_speculative_transcript(self, task: asyncio.Task[str]) -> None:
        """A finished sentence in the speculative transcript lets the turn end sooner."""
        if _transcript(task) is not None and task is self._speculation:
            self.turns.hint_transcript(task.result())
            self._start_next_reply()

    def _on_turn_event(self, ev: TurnEvent) -> None:
        super()._on_turn_event(ev)
        if ev.kind is TurnEventKind.PAUSE:
            self._paused = True
            self._start_next_reply()

    def _start_next_reply(self) -> None:
        """Start the reply behind a gate (``PARLEY_SPECULATIVE_REPLY``) once the user has
        paused (PAUSE, 150 ms of silence: not a gap between words) and the speculative
        transcript is in; one per pause."""
        source = self._speculation
        text = _transcript(source) if source is not None else None
        if not (text and self._paused and self._reply_ahead and self._next_reply is None and self.at_rest()):
            return
        assert source is not None
        gate, timer = speculation.Gate(), self.turn_timer(time.monotonic())
        reply = self.tasks.spawn(speculation.behind(gate, functools.partial(self._think_ahead, text, timer)),
                                 "reply-speculative")
        if reply is not None:
            self._next_reply = SpeculativeReply(reply, gate, source, timer)

    async def _think_ahead(self, text: str, timer: TurnTimer) -> None:
        """The reply to a turn that may not be over (behind a gate: unseen until adopted)."""
        self.set_state("thinking")
        await self._reply_to_transcript(text, timer)

    def _drop_next_reply(self) -> None:
        if self._next_reply is not None:
            self._next_reply.cancel()
            self._next_reply = None

    async def _interim_transcript(self) -> None:
        at, audio = self.turns.position(), self.turns.utterance()
        if audio.size < 4800:
            return
        started = time.monotonic()
        text = await self.stt.transcribe(audio, final=False)
        self._interim_every = next_interim_after(INTERIM_EVERY_S, time.monotonic() - started)
        if text and self.turns.in_speech:
            self.emit(events.stt_interim(text))
            self.turns.hint_transcript(text, at)

    # -- a turn ---------------------------------------------------------------------
    async def reply_to_audio(self, audio: np.ndarray, t_end: float) -> None:
        ahead, self._next_reply = self._next_reply, None
        if ahead is not None and ahead.source is self._speculation and not self.turn_merged:
            # no speech since the reply started, and the turn is the utterance it answers
            self._speculation, self._silent_frames = None, 0
            ahead.timer.t_end = t_end
            await self.within_budget(ahead.adopt(), ahead.timer)
            return
        if ahead is not None:
            ahead.cancel()
        timer = self.turn_timer(t_end)
        await self.within_budget(self._hear_and_respond(audio, timer), timer)

    async def _hear_and_respond(self, audio: np.ndarray, timer: TurnTimer) -> None:
        self.set_state("thinking")
        await self._reply_to_transcript(await self._final_transcript(audio), timer)

    async def _reply_to_transcript(self, text: str, timer: TurnTimer) -> None:
        timer.mark("stt")
        if not text:
            logger.debug("%s: no words in the utterance", self.persona.id)
            return
        self.emit(events.stt_final(text))
        await self.respond(text, timer)

    async def _final_transcript(self, audio: np.ndarray) -> str:
        """The speculative transcript if no speech came after it, else a fresh decode."""
        speculation, self._speculation = self._speculation, None
        self._silent_frames = 0
        if speculation is not None and not speculation.cancelled() and not self.turn_merged:
            return await speculation
        if speculation is not None:
            speculation.cancel()  # it covers only the resumed part of a merged turn
        return await self.stt.transcribe(audio, final=True)

    async def reply_to_text(self, text: str) -> None:
        self._drop_next_reply()
        timer = self.turn_timer(time.monotonic())
        timer.mark("stt")
        self.emit(events.stt_final(text))
        await self.within_budget(self.respond(text, timer), timer)

    def turn_timer(self, t_end: float) -> TurnTimer:
        """A turn's timer, holding it to ``PARLEY_FALLBACK_MS``."""
        return TurnTimer(t_end, budget=TurnBudget(self.settings.fallback_ms / 1000, self.settings.stage_timeout_s))

    async def within_budget(self, reply: Awaitable[None], timer: TurnTimer) -> None:
        """Run one turn's reply; a turn nothing could answer in time gets the apology."""
        assert timer.budget is not None
        failure = await timer.budget.run(reply, timer.t_end, timer.stage)
        if failure is None:
            fallback.answered(tuple(stage for stage, mark in STAGE_MARKS if mark in timer.marks))
            return
        fallback.report(failure, self.log_prefix)
        await self._apologize()

    async def _apologize(self) -> None:
        """Say the apology as this turn's reply, after whatever of the reply was heard.

        It is pre-synthesized by the local TTS, so it plays at once whatever failed.
        """
        text = f"{self.heard_text()} {APOLOGY_TEXT}".strip()
        self._spoken = []
        await self._remember_reply(text)  # before speaking: a barge-in must find it recorded
        pcm = self.services.apology
        if pcm is None:  # no local TTS on this node: the caller can only read it
            self.emit(events.error("reply_failed", APOLOGY_TEXT))
            self.emit(events.llm_done(text))
            return
        self.emit(events.tts_start())
        await self.speak(pcm)
        self.emit(events.llm_done(text))
        self.emit(events.tts_end())

    async def respond(self, user_text: str, timer: TurnTimer) -> None:
        """Stream a reply to ``user_text``: tokens to the client, speech to the track.

        The user's words are moderated and the budget checked first; either refusal is
        spoken in the persona's voice instead of calling the model. Behind a speculation's
        gate the writes and the turn count wait for its adoption.
        """
        speculation.hold_or_run(metrics.TURNS.labels(self.persona.id).inc)
        self.set_state("thinking")
        self._reply_recorded = False
        history = await self.window.load(self.ctx.session_id)
        await speculation.write(functools.partial(self.window.append, self.ctx.session_id,
                                                  Message("user", user_text)))
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
        except asyncio.CancelledError:
            if speculation.held():  # a speculation never adopted: nothing of it was seen
                raise
            if self.retracting:  # the user had not finished: the whole turn is asked again
                self.retracting = False
                await self.window.retract_turn(self.ctx.session_id)
            elif not self._reply_recorded:  # barge-in: history keeps only what was heard
                # (a hang-up during budget.charge comes after the reply was recorded)
                await self._remember_reply(self.heard_text())
            raise
        self._report(timer, turn_usage)

    async def _fill_dead_air(self, timer: TurnTimer) -> None:
        """Say the filler if the reply has not started ``filler_after_s`` after the turn.

        A slow or failing backend (and its fallback) must not leave the caller in silence:
        the filler is pre-synthesized, so it plays within a frame.
        """
        await speculation.visible()
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
        self.emit(events.llm_done(text))
        if self._spoken:
            self.emit(events.tts_end())

    async def _write(self, messages: list[Message], pieces: asyncio.Queue[str | None],
                     reply: list[str], timer: TurnTimer) -> None:
        chunker = SentenceChunker()
        remote = isinstance(self.llm, resilience.FallbackLLM)
        deadline = timer.budget.asking_llm(remote) if timer.budget is not None else None
        with resilience.answer_by(deadline):  # a remote LLM gives up when the turn does
            stream = self.llm.stream(messages, generation_params(self.persona, self.emotion))
            try:
                async for token in stream:
                    timer.mark("llm_first_token")
                    reply.append(token)
                    self.emit(events.llm_token(token))
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
                await speculation.visible()  # held audio plays as soon as the reply is adopted
                if "tts_first_audio" not in timer.marks:
                    await self._floor_clear()
                spoken.playouts.append(self.speaker.play(pcm))
                if "tts_first_audio" not in timer.marks:
                    timer.mark("tts_first_audio")
                    self.emit(events.tts_start())
                    self.set_state("speaking")
        finally:
            await stream.aclose()
        return spoken.playouts[-1] if spoken.playouts else None

    async def _floor_clear(self) -> None:
        """Hold the reply's first audio while the user has begun to speak again.

        A speaker resuming after a pause the end of turn took for the end is heard as an
        onset ~30 ms in, and confirmed ~250 ms later -- when the reply is withdrawn and the
        two parts become one turn. A reply ready in between would start under them and be
        heard; held here it is withdrawn unheard. A cough lets it go when its onset is
        cancelled (at most ``max_onset_ms``)."""
        await self.floor_free.wait()

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
        await speculation.visible()
        self._reply_recorded = True
        if text:
            await self.window.append(self.ctx.session_id, Message("assistant", text))

    # -- long-term memory and the turn log ------------------------------------------
    async def _recall(self, user_text: str) -> list[str]:
        """Memories of this user relevant to what they said (none if the persona keeps none).

        Bounded by ``PARLEY_RECALL_TIMEOUT_MS``: a slow or stopped memory store costs the
        reply its memories, not its time.
        """
        memory = self.services.memory
        if memory is None or self.persona.memory_policy == "none":
            return []
        try:
            async with asyncio.timeout(self.settings.recall_timeout_ms / 1000):
                return await memory.recall(self.ctx.user_id, self.persona.id, user_text,
                                           budget_tokens=self.settings.memory_budget_tokens,
                                           count_tokens=self.llm.count_tokens)
        except Exception as exc:
            _memory_failed(exc, f"turns are answered without memories (first: {self.log_prefix})")
            return []

    def _keep_memories(self, user_text: str) -> None:
        """Capture what is worth remembering of the user's words, off the reply's path."""
        memory, policy = self.services.memory, self.persona.memory_policy
        if memory is None or policy == "none":
            return

        async def capture() -> None:
            try:
                await memory.capture(self.ctx.user_id, self.persona.id, user_text,
                                     explicit_only=policy == "explicit")
            except Exception as exc:
                _memory_failed(exc, f"what users say is not remembered (first: {self.log_prefix})")

        def start() -> None:
            self.tasks.spawn(capture(), "memory capture")

        speculation.hold_or_run(start)

    def _log_turn(self, latency_ms: dict[str, float], turn_usage: usage.Usage | None) -> None:
        """Write the turn log and touch the session, off the reply's path; both wait out a
        short Postgres outage and are dropped (counted) after a long one."""
        store = self.services.store
        if store is None:
            return
        counts = dataclasses.asdict(turn_usage) if turn_usage is not None else {}
        session, user, persona = self.ctx.session_id, self.ctx.user_id, self.persona.id
        writes: dict[str, Callable[[], Awaitable[object]]] = {
            "turn log": lambda: store.log_turn(session, user, persona, latency_ms=latency_ms, usage=counts),
            "session touch": lambda: store.touch_session(session),
        }
        for what, write in writes.items():
            self.tasks.spawn(write_with_retry(what, write, context=self.log_prefix), what)

    def _report(self, timer: TurnTimer, turn_usage: usage.Usage | None) -> None:
        stages = timer.stages_ms()
        for stage, ms in stages.items():
            metrics.STAGE_LATENCY.labels(stage).observe(ms / 1000)
        self.emit(events.metrics(stages, late_frames=getattr(self.speaker, "late_frames", None)))
        self._log_turn(stages, turn_usage)

    async def close(self) -> None:
        self._drop_next_reply()
        for task in (self._interim, self._speculation):
            if task is not None:
                task.cancel()
        await super().close()  # also lets the turn log and memory capture land (bounded)


def _transcript(task: asyncio.Task[str]) -> str | None:
    """A transcription task's text, or None while it runs or if it failed or was cancelled."""
    if not task.done() or task.cancelled() or task.exception() is not None:
        return None
    return task.result()


def _memory_failed(exc: BaseException, fallback_note: str) -> None:
    """Count and log (once per outage) a failure of long-term memory: Milvus, Postgres or
    the embedder. The vector store reports its own outages."""
    if not isinstance(exc, VectorStoreUnavailable):
        deps.failed(deps.name_of(exc, "memory"), exc, fallback_note)
