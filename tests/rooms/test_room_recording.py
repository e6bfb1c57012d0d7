"""Room recording, per speaker and only with everyone's consent, over real WebRTC.

A room created with the creator's consent; two aiortc participants join with their own
consent, each sending its own tone in its own time slot, and the room's voice (what the
agent would say; the echo persona has no agent, so the test plays a tone into it) its own.
Each participant's export must hold one mono file with their tone — and not the other's —
where it was said; the creator's export the voice's. Deleting a user removes only their
file. A join without consent into that room is refused and records nothing; one with the
participant's own session token records for that session's user.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from datetime import datetime

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from parley.call.room import RoomClient, create_room
from pipeline.audio import RATE
from signaling.keys import RECORDINGS, ROOMS, STORE
from tests.rooms.test_rooms import band_db, tone
from tests.test_recording import _export_headers, _loud_spans, _read_wav

FREQS = {"Ann": 440.0, "Bob": 660.0}
VOICE_HZ = 990.0
SAID_S = 1.0


def _wall(monotonic_t: float) -> float:
    """A monotonic instant as unix time (the rows' started_at is wall-clock)."""
    return time.time() - (time.monotonic() - monotonic_t)


async def _recordings_of(http: aiohttp.ClientSession, url: str, session: dict) -> list[tuple[dict, np.ndarray]]:
    """Every recording in the user's export, with its downloaded audio."""
    headers = await _export_headers(http, url, session)
    async with http.get(f"{url}/api/users/{session['user_id']}/export", headers=headers) as r:
        assert r.status == 200
        entries = (await r.json())["recordings"]
    found = []
    for entry in entries:
        async with http.get(f"{url}{entry['download']}", headers=headers) as r:
            assert r.status == 200 and r.content_type == "audio/wav"
            data = await r.read()
        params, pcm = _read_wav(data)
        assert (params.nchannels, params.framerate) == (1, RATE) and entry["bytes"] == len(data)
        found.append((entry, pcm[:, 0]))
    return found


def _check_track(entry: dict, pcm: np.ndarray, hz: float, said_at: float, others: list[float]) -> None:
    """One speaker's file: their tone, loud for about as long as they spoke and when they
    spoke, far above any other speaker's tone."""
    spans = _loud_spans(pcm)
    assert len(spans) == 1, f"one sound expected, got {spans}"
    ((start, end),) = spans
    assert end - start == pytest.approx(SAID_S, abs=0.15)
    began = datetime.fromisoformat(entry["started_at"]).timestamp() + start
    assert began == pytest.approx(said_at, abs=0.6), "the sound is not where it was said"
    said = pcm[int(start * RATE):int(end * RATE)]
    for other in others:
        assert band_db(said, hz) - band_db(said, other) >= 30, (hz, other)


async def _refused_join(client: RoomClient) -> str:
    """Try to join; the refusal (its peer is closed either way)."""
    try:
        with pytest.raises(RuntimeError) as refused:
            await client.connect()
    finally:
        await client.close()
    return str(refused.value)


async def _delete_user(http: aiohttp.ClientSession, url: str, session: dict) -> None:
    async with http.delete(f"{url}/api/users/{session['user_id']}",
                           headers={"Authorization": f"Bearer {session['token']}"}) as r:
        assert r.status == 204


async def test_a_recorded_room_keeps_each_speaker_for_their_own_user(server: tuple[web.AppRunner, str]) -> None:
    runner, url = server
    room = await create_room(url, "echo", record=True)
    assert room["recording"] is True
    creator = room["session"]
    live = runner.app[ROOMS].rooms[room["room_id"]]
    said_at: dict[str, float] = {}
    async with AsyncExitStack() as stack:
        clients = {name: await stack.enter_async_context(RoomClient(
            url, token=room["token"], room_id=room["room_id"], name=name, record=True)) for name in FREQS}
        users = {name: c.session for name, c in clients.items()}
        assert all(c.recording for c in clients.values())
        assert len({s["user_id"] for s in users.values()} | {creator["user_id"]}) == 3
        refusal = await _refused_join(RoomClient(url, token=room["token"], room_id=room["room_id"], name="Cat"))
        assert "403 recording_consent_required" in refusal
        assert len(live.participants) == 2
        await asyncio.sleep(0.5)
        for name, client in clients.items():  # one at a time, a silence between
            playback = client.say(tone(FREQS[name], SAID_S))
            await playback.done
            assert playback.started_at is not None
            said_at[name] = _wall(playback.started_at)
            await asyncio.sleep(0.5)
        voice = live.voice.play(tone(VOICE_HZ, SAID_S))
        await voice.done
        assert voice.started_at is not None
        said_at["agent"] = _wall(voice.started_at)
        await asyncio.sleep(0.5)
        async with aiohttp.ClientSession() as http, http.delete(
                f"{url}/api/rooms/{room['room_id']}", headers={"Authorization": f"Bearer {room['token']}"}) as r:
            assert r.status == 204
    assert await runner.app[RECORDINGS].idle(20.0)

    async with aiohttp.ClientSession() as http:
        for name, session in users.items():
            ((entry, pcm),) = await _recordings_of(http, url, session)
            assert entry["room_id"] == room["room_id"] and entry["call_id"] == clients[name].participant_id
            assert entry["channels"] == ["participant"] and entry["session_id"] == session["session_id"]
            _check_track(entry, pcm, FREQS[name], said_at[name],
                         [hz for hz in (*FREQS.values(), VOICE_HZ) if hz != FREQS[name]])
        ((entry, pcm),) = await _recordings_of(http, url, creator)
        assert entry["room_id"] == room["room_id"] and (entry["call_id"], entry["channels"]) == ("agent", ["agent"])
        _check_track(entry, pcm, VOICE_HZ, said_at["agent"], list(FREQS.values()))

        await _delete_user(http, url, users["Ann"])
        assert await _recordings_of(http, url, users["Bob"]), "Bob's recording went with Ann"
        pool = runner.app[STORE].pool
        assert await pool.fetchval("SELECT count(*) FROM recordings WHERE room_id = $1", room["room_id"]) == 2
        await _delete_user(http, url, users["Bob"])
        await _delete_user(http, url, creator)
    assert await pool.fetchval("SELECT count(*) FROM recordings") == 0
    folder = runner.app[RECORDINGS].sink.root  # type: ignore[attr-defined]
    assert not [p for p in folder.rglob("*") if p.is_file()], "a deleted user's audio is still on disk"


async def test_consent_is_asked_of_everyone_and_only_a_recorded_room_keeps_audio(
        server: tuple[web.AppRunner, str]) -> None:
    runner, url = server
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/api/rooms", json={"persona": "echo", "record": "yes"}) as r:
            assert r.status == 400 and (await r.json())["error"]["code"] == "bad_record"
        recorded = await create_room(url, "echo", record=True)
        # the WebSocket fallback cannot consent: refused before the upgrade
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(f"{url}/ws?room={recorded['room_id']}&name=W",
                                  protocols=("parley.v1", f"parley.token.{recorded['token']}"))
        assert refused.value.status == 403
        # a participant with a session of their own: the recording is that user's
        async with http.post(f"{url}/api/sessions", json={"persona": "echo"}) as r:
            mine = await r.json()
        assert "401 bad_token" in await _refused_join(RoomClient(
            url, token=recorded["token"], room_id=recorded["room_id"], name="Dan", record=True,
            session_token="not-a-token"))
        async with RoomClient(url, token=recorded["token"], room_id=recorded["room_id"], name="Dan",
                              record=True, session_token=mine["token"]) as dan:
            assert dan.recording and (dan.session["user_id"], dan.session["session_id"]) == \
                (mine["user_id"], mine["session_id"])
            await dan.say(tone(440, 0.5)).done
        async with http.delete(f"{url}/api/rooms/{recorded['room_id']}",
                               headers={"Authorization": f"Bearer {recorded['token']}"}) as r:
            assert r.status == 204
        assert await runner.app[RECORDINGS].idle(10.0)
        ((entry, _),) = await _recordings_of(http, url, mine)
        assert entry["room_id"] == recorded["room_id"] and entry["call_id"] == dan.participant_id
    plain = await create_room(url, "echo")
    assert plain["recording"] is False and "session" not in plain
    async with RoomClient(url, token=plain["token"], room_id=plain["room_id"], name="Ann", record=True) as ann:
        assert ann.recording is False and ann.session == {}  # consent alone records nothing
        await ann.say(tone(440, 0.5)).done
    assert await runner.app[RECORDINGS].idle(10.0)
    assert await runner.app[STORE].pool.fetchval("SELECT count(*) FROM recordings") == 1  # Dan's only
