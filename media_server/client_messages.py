"""Client events in, for every kind of leg: a 1:1 call and a room participant alike.

One path from the wire to a handler, so a call and a room answer malformed input the same
way (``event_too_large``, ``bad_event``, ``busy``): the raw text is size-checked, parsed,
shape-checked once (:mod:`media_server.event_guard`), ``ping`` times are recorded for the
leg's watchdog, urgent control (``interrupt``) acts at once, and everything else waits in
the bounded :class:`media_server.inbox.Inbox` for the leg's one consumer task, which
handles messages in arrival order and survives a handler that raises.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from media_server.event_guard import event_problem
from media_server.events import EventSink
from media_server.inbox import AUDIO_TYPES, Inbox
from pipeline import events
from pipeline.tasks import TaskRegistry

logger = logging.getLogger(__name__)

MAX_EVENT_BYTES = 16384
PING_TIMEOUT_S = 10.0  # a client that pinged and then went quiet this long is gone
#: handled at once, ahead of queued messages: the type of a message decides its priority
URGENT_TYPES = frozenset({"interrupt"})

Message = dict[str, Any]
Handler = Callable[[Message], Awaitable[None]]


class ClientMessages:
    """The intake of one leg's client events (see module docstring)."""

    def __init__(self, log_prefix: str, sink: EventSink, handle: Handler,
                 urgent: Callable[[Message], None], tasks: TaskRegistry) -> None:
        self.log_prefix = log_prefix
        self.inbox = Inbox()
        self.dropped_audio = 0
        self.last_ping: float | None = None
        self._sink = sink
        self._handle = handle
        self._urgent = urgent
        tasks.spawn(self._serve(), "inbox")

    def receive(self, raw: str | bytes) -> None:
        """A JSON event from the client; synchronous and cheap (the consumer does the work)."""
        message = self._parse(raw)
        if message is None:
            return
        kind = message["type"]
        if kind == "ping":
            self.last_ping = time.monotonic()
        if kind in URGENT_TYPES:
            self._urgent(message)
            return
        self._enqueue(message)

    def ping_timed_out(self, now: float) -> bool:
        """The client pinged once and has been silent for ``PING_TIMEOUT_S`` since."""
        return self.last_ping is not None and now - self.last_ping > PING_TIMEOUT_S

    def _parse(self, raw: str | bytes) -> Message | None:
        """The well-formed event in ``raw``, or None after telling the client what is wrong."""
        if len(raw) > MAX_EVENT_BYTES:
            self._sink.send(events.error("event_too_large", "event over 16 KiB"))
            return None
        try:
            message = json.loads(raw)
            if not isinstance(message, dict):
                raise ValueError("not an object")
        except (ValueError, RecursionError) as exc:
            self._sink.send(events.error("bad_event", f"invalid JSON event: {str(exc)[:120]}"))
            return None
        problem = event_problem(message)
        if problem is not None:
            self._sink.send(events.error("bad_event", problem))
            return None
        return message

    def _enqueue(self, message: Message) -> None:
        dropped = self.inbox.put(message)
        if dropped is None:
            return
        if dropped.get("type") not in AUDIO_TYPES:  # control is never lost silently
            logger.warning("%s: inbox full of control messages; refused %s", self.log_prefix, dropped.get("type"))
            self._sink.send(events.error("busy", f"server busy: {dropped.get('type')!r} event dropped"))
        else:  # a gap in the audio: logged, not worth an event per chunk
            self.dropped_audio += 1
            if self.dropped_audio == 1 or self.dropped_audio % 50 == 0:
                logger.warning("%s: inbox full; dropped %d old audio chunks so far", self.log_prefix,
                               self.dropped_audio)

    async def _serve(self) -> None:
        """The one consumer: client messages handled one at a time, in arrival order."""
        while True:
            message = await self.inbox.get()
            try:
                await self._handle(message)
            except Exception:  # one bad message must not end the leg's event handling
                logger.exception("%s: handling %s failed", self.log_prefix, message.get("type"))
                self._sink.send(events.error("internal", f"could not handle {message.get('type')!r}"))
