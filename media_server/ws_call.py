"""The WebSocket fallback call: for clients where WebRTC cannot connect.

Same agent, same paced track and same events as :class:`RtcCall`; audio travels as JSON
messages instead of RTP: ``audio-chunk {seq, data, rate}`` in (base64 little-endian int16
mono) and ``tts-chunk {audio, rate}`` out, one 20 ms frame per message, paced by the
track's real-time clock so the page can schedule them gaplessly.
"""

from __future__ import annotations

import base64
import binascii
import time
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from media_server.call import AgentFactory, Call, CallSession
from media_server.events import WebSocketEvents, event
from pipeline.audio import RATE
from pipeline.dsp.resample import FrameResampler

ALLOWED_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)


class WsCall(Call):
    transport = "ws"

    def __init__(self, session: CallSession, agent_factory: AgentFactory, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self._ws_events = WebSocketEvents(ws)
        super().__init__(session, self._ws_events, agent_factory)
        self._converters: dict[int, FrameResampler] = {}

    async def run(self) -> None:
        """Serve the socket until the client leaves, then tear the call down."""
        self.spawn(self._pump(), "ws outbound audio")
        self.spawn(self.watchdog(), "watchdog")
        self.events.send(event("turn", state=self.agent.state))
        async for msg in self.ws:
            if msg.type == WSMsgType.TEXT:
                self.on_client_message(msg.data)
            elif msg.type == WSMsgType.BINARY:
                self.events.send(event("error", code="bad_event", message="binary frames are not accepted"))
        await self.close("websocket closed")

    async def handle_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "audio-chunk":
            self._on_audio_chunk(message)
        elif kind != "audio-end":  # audio-end needs nothing: end of turn comes from the VAD
            await super().handle_message(message)

    def _on_audio_chunk(self, message: dict[str, Any]) -> None:
        rate = message.get("rate", RATE)
        try:
            if rate not in ALLOWED_RATES:
                raise ValueError(f"rate must be one of {ALLOWED_RATES}")
            raw = base64.b64decode(message.get("data", ""), validate=True)
            if len(raw) % 2 or len(raw) > rate:  # at most 0.5 s per chunk
                raise ValueError("data must be int16 PCM of at most 0.5 s")
        except (ValueError, binascii.Error, TypeError) as exc:
            self.events.send(event("error", code="bad_audio", message=str(exc)))
            return
        converter = self._converters.setdefault(rate, FrameResampler())
        self.feed(converter.push_pcm(np.frombuffer(raw, dtype="<i2"), rate), time.monotonic())

    async def _pump(self) -> None:
        """Pull the paced track like an RTP sender would; forward frames that carry voice."""
        while True:
            frame = await self.track.recv()
            pcm = frame.to_ndarray()
            if pcm.any():
                data = base64.b64encode(pcm.astype("<i2").tobytes()).decode()
                self.events.send(event("tts-chunk", audio=data, rate=RATE))

    async def close_transport(self) -> None:
        await self._ws_events.close()
        await self.ws.close()
