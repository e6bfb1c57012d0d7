"""A reply started before the turn has ended, invisible until the end of turn adopts it.

When the user pauses, ``VoiceAgent`` transcribes the utterance at once and, with that
transcript in, starts the whole reply -- moderation, recall, LLM, TTS -- behind a
:class:`Gate`. Everything the user or the records could see is held by the gate: events
(and the agent's state changes, which are events), audio, the conversation window, memory
capture, turn metrics and the turn log. At ``end-of-turn`` for the same utterance the
reply is *adopted*: :meth:`Gate.release` replays what was held, in order, and the reply goes
on as a normal one, its first audio often already synthesized. If the user speaks again
first, the reply is cancelled and nothing of it was ever seen: it cost only CPU.

The gate of the running reply is found through a context variable, set inside the
speculative task, so the tasks the reply starts (LLM writer, TTS speaker) run behind it
too, while the agent's other work (frames, interim transcripts, another reply) does not.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from parley.config import Settings

T = TypeVar("T")

#: what a held action may be: an event to send, a state change, a write
Action = Callable[[], Awaitable[object] | None]

_gate: contextvars.ContextVar[Gate | None] = contextvars.ContextVar("parley_speculation_gate", default=None)


class Gate:
    """Holds a speculative reply's visible effects until :meth:`release`."""

    def __init__(self) -> None:
        self.released = asyncio.Event()
        self.error: Exception | None = None  # the reply's failure, raised at adoption
        self._held: list[Action] = []

    def hold(self, action: Action) -> None:
        self._held.append(action)

    async def release(self) -> None:
        """Run the held actions in order (awaiting writes); from then on nothing is held.

        The reply keeps running meanwhile: what it holds during a write is run too,
        before the gate opens, so the order is kept.
        """
        while self._held:
            result = self._held.pop(0)()
            if inspect.isawaitable(result):
                await result
        self.released.set()


async def behind(gate: Gate, reply: Callable[[], Awaitable[None]]) -> None:
    """Run ``reply()`` (and the tasks it starts) behind ``gate``: the body of a speculative
    task. A failure is kept for the adoption to raise where a turn's failures are handled
    (the spoken apology); a speculation never adopted fails unseen."""
    _gate.set(gate)
    try:
        await reply()
    except Exception as exc:
        gate.error = exc


def _holding() -> Gate | None:
    gate = _gate.get()
    return gate if gate is not None and not gate.released.is_set() else None


def held() -> bool:
    """True inside a speculative reply that has not been adopted (yet)."""
    return _holding() is not None


def hold_or_run(action: Action) -> Awaitable[object] | None:
    """Run ``action`` now, or hold it for the release inside an unadopted speculation.

    Returns what ``action`` returned when it ran (an awaitable write), else None.
    """
    gate = _holding()
    if gate is None:
        return action()
    gate.hold(action)
    return None


async def write(action: Callable[[], Awaitable[object]]) -> None:
    """A write (window, memory): now, or at the release without waiting for it."""
    result = hold_or_run(action)
    if result is not None:
        await result


async def visible() -> None:
    """Wait until the reply is adopted (at once outside a speculation): audio waits here."""
    gate = _gate.get()
    if gate is not None:
        await gate.released.wait()


def enabled(settings: Settings) -> bool:
    """``PARLEY_SPECULATIVE_REPLY``: auto speculates only on local LLM and TTS, as a remote
    service bills the work a cancelled speculation throws away."""
    if settings.speculative_reply == "auto":
        return settings.llm == "local" and settings.tts == "local"
    return settings.speculative_reply == "1"


@dataclass(eq=False)
class SpeculativeReply(Generic[T]):
    """One speculative reply: its task, its gate, the transcript task it answers, its timer."""

    task: asyncio.Task[None]
    gate: Gate
    source: asyncio.Task[str]  # the speculative transcript; adopted only if still the turn's
    timer: T  # the turn's milestones, its end of turn set at adoption

    def cancel(self) -> None:
        self.task.cancel()

    async def adopt(self) -> None:
        """Make the reply visible and see it through (a cancellation reaches the reply)."""
        try:
            await self.gate.release()
        except asyncio.CancelledError:
            self.task.cancel()
            raise
        await self.task
        if self.gate.error is not None:
            raise self.gate.error
