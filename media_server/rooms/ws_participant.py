"""A room participant over the WebSocket fallback (``/ws?room=ID&name=N``).

The same messages and the same code as a WebSocket call (:mod:`media_server.ws_audio`,
:mod:`media_server.client_messages`): ``audio-chunk {seq, data, rate}`` in, base64
little-endian int16 mono; the participant's mix out as ``tts-chunk {audio, rate}``, one
20 ms frame per message as the mixer's clock produces it (silent frames are skipped, as for
a call), with every room event on the same socket.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from media_server.events import WebSocketEvents
from media_server.rooms.participant import Participant
from media_server.ws_audio import WsAudio
from parley.config import Settings
from pipeline import events

if TYPE_CHECKING:
    from media_server.rooms.room import Room


class WsParticipant(Participant):
    transport = "ws"

    def __init__(self, room: Room, name: str, settings: Settings, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self._ws_events = WebSocketEvents(ws)
        super().__init__(room, name, settings, self._ws_events)
        self.audio = WsAudio(self._ws_events)

    async def run(self) -> None:
        """Serve the socket until the client leaves, then leave the room."""
        self.tasks.spawn(self.audio.pump(self.out), "ws outbound audio")
        self.tasks.spawn(self._watchdog(), "watchdog")
        async for msg in self.ws:
            if msg.type == WSMsgType.TEXT:
                self.on_message(msg.data)
            elif msg.type == WSMsgType.BINARY:
                self.events.send(events.error("bad_event", "binary frames are not accepted"))
        await self.close("websocket closed")

    async def handle_message(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "audio-chunk":
            frames = self.audio.frames(message)
            if frames:
                self.feed(frames, time.monotonic())
        elif kind != "audio-end":
            await super().handle_message(message)

    async def close_transport(self) -> None:
        await self._ws_events.close()
        await self.ws.close()
