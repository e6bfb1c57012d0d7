"""A headless room participant: :class:`CallClient`'s peer, joining a room instead of a persona.

Everything a test or bench needs to check a room from a participant's ears — the received
audio with arrival times, the events, the microphone's send times — comes from
:class:`CallClient`; only the join differs: the offer goes to ``/api/offer`` with
``room_id`` and ``name``, authorized by the room token. With ``record=True`` the participant
consents to being recorded (a recorded room refuses a join without it); ``session`` is then
the session whose user owns the recording (``session_token``'s, or a new one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
from aiortc import RTCSessionDescription

from media_server.tuning import tune_audio_receivers
from parley.call.client import CallClient, _json_or_raise


async def create_room(url: str, persona: str, policy: str | None = None, name: str = "", *,
                      record: bool = False, session_token: str | None = None) -> dict[str, Any]:
    """``POST /api/rooms``; returns ``{room_id, token, join_url, recording}`` (and ``session``,
    the owner of the agent's recording, when ``record``: the creator's consent)."""
    body: dict[str, Any] = {"persona": persona, "name": name}
    if policy is not None:
        body["policy"] = policy
    if record:
        body["record"] = True
    headers = {"Authorization": f"Bearer {session_token}"} if session_token else {}
    async with aiohttp.ClientSession() as http, http.post(f"{url}/api/rooms", json=body, headers=headers) as r:
        return await _json_or_raise(r)


@dataclass
class RoomClient(CallClient):
    """One participant; ``async with RoomClient(url, room_id=…, token=…, name="Ann")``."""

    room_id: str = ""
    name: str = "guest"
    session_token: str | None = None  # with record: the participant's own session (owns the recording)

    async def connect(self, timeout: float = 15.0) -> None:
        self.pc.addTrack(self.mic)
        self.pc.on("track", self._on_track)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        headers = {"Authorization": f"Bearer {self.token}"}
        body: dict[str, Any] = {"sdp": self.pc.localDescription.sdp, "type": "offer", "room_id": self.room_id,
                                "name": self.name, "record": self.record}
        if self.session_token:
            body["session_token"] = self.session_token
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http, \
                http.post(f"{self.url}/api/offer", json=body, headers=headers) as r:
            answer = await _json_or_raise(r)
        await self.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        tune_audio_receivers(self.pc, self.jitter_prefetch)
        self.participant_id: str = answer["participant_id"]
        self.recording = bool(answer.get("recording"))
        self.session = answer.get("session") or {}
        await self.wait_event(lambda e: e["type"] == "participant-joined"
                              and e["participant_id"] == self.participant_id, timeout=timeout)
