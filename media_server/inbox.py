"""The bounded inbox of one call: client messages, parsed, waiting for the call's consumer.

One consumer task per call handles messages in arrival order (a task per message cost
~50 tasks/s on the WebSocket path, where audio comes as ``audio-chunk`` messages, and let
messages overtake each other). The bound is explicit, and so is what gives way when a slow
agent lets it fill: the *oldest audio chunk* — stale audio is worth least, and the turn
detector copes with a gap better than with a backlog. A control message is never dropped
to make room for audio; when the inbox holds nothing but control messages a new one is
refused, and the caller tells the client.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

INBOX_SIZE = 64  # > 1 s of 20 ms audio chunks: a hiccup, not a backlog
AUDIO_TYPES = frozenset({"audio-chunk"})

Message = dict[str, Any]


class Inbox:
    """A FIFO with an oldest-audio-first drop policy; :meth:`get` waits on an event."""

    def __init__(self, maxsize: int = INBOX_SIZE) -> None:
        self.maxsize = maxsize
        self._items: collections.deque[Message] = collections.deque()
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, message: Message) -> Message | None:
        """Queue ``message``; returns what was dropped to keep the bound, else None.

        The returned message is either an older audio chunk (dropped to make room) or
        ``message`` itself (refused: the inbox is full of control messages).
        """
        dropped = None
        if len(self._items) >= self.maxsize:
            dropped = self._drop_oldest_audio()
            if dropped is None:
                return message
        self._items.append(message)
        self._ready.set()
        return dropped

    def _drop_oldest_audio(self) -> Message | None:
        for i, item in enumerate(self._items):
            if item.get("type") in AUDIO_TYPES:
                del self._items[i]
                return item
        return None

    async def get(self) -> Message:
        """The oldest message, waiting for one if the inbox is empty."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()
