"""A room participant's client events go through the same intake as a call's.

Over a real server and a real WebSocket, malformed events get the replies a 1:1 call gives
(``event_too_large``, ``bad_event`` from the shape check, ``bad_audio``), and well-formed
ones still act (``mute`` shows in ``GET /api/rooms/{id}``, ``ping`` is answered).
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from parley.call.room import create_room


async def _next(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    """The next event of type ``kind`` (others, like participant-joined, are passed over)."""
    for _ in range(50):
        message = await ws.receive_json(timeout=10)
        if message["type"] == kind:
            return dict(message)
    raise AssertionError(f"no {kind} event")


async def test_room_participant_events_are_checked_like_a_calls(url: str) -> None:
    room = await create_room(url, "echo")
    headers = {"Authorization": f"Bearer {room['token']}"}
    async with aiohttp.ClientSession() as http, \
            http.ws_connect(f"{url}/ws?room={room['room_id']}&name=Wes",
                            protocols=("parley.v1", f"parley.token.{room['token']}")) as ws:
        joined = await _next(ws, "joined")
        bad = [
            ("x" * 20000, "event_too_large"),
            ("{not json", "bad_event"),
            (json.dumps([1, 2]), "bad_event"),
            (json.dumps({"type": 5}), "bad_event"),
            (json.dumps({"type": "text", "text": 5}), "bad_event"),  # the shape check, not a crash
            (json.dumps({"type": "mute", "on": "yes"}), "bad_event"),
            (json.dumps({"type": "audio-chunk", "seq": 0, "data": "", "rate": 48000}), "bad_audio"),
            (json.dumps({"type": "audio-chunk", "seq": 0, "data": "AAAA", "rate": 12345}), "bad_audio"),
            (json.dumps({"type": "no-such-event"}), "bad_event"),
        ]
        for raw, code in bad:
            await ws.send_str(raw)
            error = await _next(ws, "error")
            assert error["code"] == code, (raw[:40], error)
        await ws.send_json({"type": "mute", "on": True})
        muted = await _next(ws, "muted")
        assert muted == {"type": "muted", "participant_id": joined["participant_id"], "on": True}
        await ws.send_json({"type": "ping", "t": 7})
        assert (await _next(ws, "pong"))["t"] == 7
        async with http.get(f"{url}/api/rooms/{room['room_id']}", headers=headers) as r:
            info = await r.json()
    assert [(p["name"], p["muted"]) for p in info["participants"]] == [("Wes", True)]
