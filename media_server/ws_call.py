"""The WebSocket fallback call: for clients where WebRTC cannot connect.

Same agent, same paced track and same events as :class:`RtcCall`; audio travels as JSON
messages instead of RTP (:mod:`media_server.ws_audio`, shared with room participants):
``audio-chunk {seq, data, rate}`` in and ``tts-chunk {audio, rate}`` out, one 20 ms frame
per message, paced by the track's real-time clock so the page can schedule them gaplessly.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import WSMsgType, web

from media_server.call import AgentFactory, Call, CallSession
from media_server.events import WebSocketEvents
from media_server.ws_audio import WsAudio
from pipeline import events


class WsCall(Call):
    transport = "ws"

    def __init__(self, session: CallSession, agent_factory: AgentFactory, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self._ws_events = WebSocketEvents(ws)
        super().__init__(session, self._ws_events, agent_factory)
        self.audio = WsAudio(self._ws_events)

    async def run(self) -> None:
        """Serve the socket until the client leaves, then tear the call down."""
        self.tasks.spawn(self.audio.pump(self.track), "ws outbound audio")
        self.tasks.spawn(self.watchdog(), "watchdog")
        self.events.send(events.turn(self.agent.state))
        async for msg in self.ws:
            if msg.type == WSMsgType.TEXT:
                self.on_client_message(msg.data)
            elif msg.type == WSMsgType.BINARY:
                self.events.send(events.error("bad_event", "binary frames are not accepted"))
        await self.close("websocket closed")

    async def handle_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "audio-chunk":
            frames = self.audio.frames(message)
            if frames:
                self.feed(frames, time.monotonic())
        elif kind != "audio-end":  # audio-end needs nothing: end of turn comes from the VAD
            await super().handle_message(message)

    async def close_transport(self) -> None:
        await self._ws_events.close()
        await self.ws.close()
