"""The event channel to a client: the WebRTC DataChannel ``events`` or a WebSocket.

Both carry the same JSON messages (README, Events), built by ``pipeline.events``; this
module only delivers them. Sending never blocks the caller and never raises: events
emitted before the channel opens are queued (bounded), events after it closed are
dropped — a vanished client must not break the agent loop.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from typing import Any, Protocol

from aiohttp import web

logger = logging.getLogger(__name__)

MAX_PENDING = 256


class EventSink(Protocol):
    def send(self, message: dict[str, Any]) -> None: ...


class DataChannelEvents:
    """Events over an aiortc RTCDataChannel, attached once the client's channel arrives."""

    def __init__(self) -> None:
        self._channel: Any = None
        self._pending: collections.deque[str] = collections.deque(maxlen=MAX_PENDING)

    def attach(self, channel: Any) -> None:
        self._channel = channel
        if channel.readyState == "open":
            self._drain()
        else:
            channel.on("open", self._drain)

    def send(self, message: dict[str, Any]) -> None:
        text = json.dumps(message, separators=(",", ":"))
        channel = self._channel
        if channel is None or channel.readyState == "connecting":
            self._pending.append(text)
        elif channel.readyState == "open":
            channel.send(text)

    def _drain(self) -> None:
        while self._pending and self._channel.readyState == "open":
            self._channel.send(self._pending.popleft())


class WebSocketEvents:
    """Events over an aiohttp WebSocket; a writer task serialises the async sends."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self._ws = ws
        self._queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=4 * MAX_PENDING)
        self._task = asyncio.create_task(self._writer(), name="ws-events-writer")

    def send(self, message: dict[str, Any]) -> None:
        if self._ws.closed:
            return
        try:
            self._queue.put_nowait(json.dumps(message, separators=(",", ":")))
        except asyncio.QueueFull:
            logger.warning("websocket client too slow: dropping %s event", message.get("type"))

    async def _writer(self) -> None:
        while (text := await self._queue.get()) is not None:
            try:
                await self._ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return

    async def close(self) -> None:
        if self._task.done():
            return
        try:
            self._queue.put_nowait(None)  # let queued events go out first
        except asyncio.QueueFull:
            self._task.cancel()
        try:
            await asyncio.wait_for(self._task, timeout=2)
        except (TimeoutError, asyncio.CancelledError):
            pass
