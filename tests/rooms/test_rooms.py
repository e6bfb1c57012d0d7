"""Rooms over real WebRTC: three aiortc participants on loopback, the echo persona (no agent).

Each participant sends its own tone, in its own time slot; what each one receives is
correlated with what each one sent: the others' tones must be there, its own must not.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from parley.call.room import RoomClient, create_room
from pipeline.audio import RATE

FREQS = {"Ann": 440.0, "Bob": 660.0, "Cat": 990.0}


def tone(freq: float, seconds: float, amp: float = 8000) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def band_db(pcm: np.ndarray, freq: float) -> float:
    """Level (dB, arbitrary reference) of ``pcm`` in a narrow band around ``freq``."""
    x = pcm.astype(np.float64) * np.hanning(pcm.size)
    spectrum = np.abs(np.fft.rfft(x))
    lo, hi = int((freq - 5) * pcm.size / RATE), int((freq + 5) * pcm.size / RATE) + 1
    return 20 * np.log10(spectrum[lo:hi].max() + 1e-9)


async def join_all(stack: AsyncExitStack, url: str, room: dict, names: list[str]) -> dict[str, RoomClient]:
    clients = {}
    for name in names:
        client = RoomClient(url, token=room["token"], room_id=room["room_id"], name=name)
        clients[name] = await stack.enter_async_context(client)
    return clients


async def room_info(url: str, room: dict) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {room['token']}"}
    async with aiohttp.ClientSession() as http, http.get(f"{url}/api/rooms/{room['room_id']}",
                                                          headers=headers) as r:
        return r.status, await r.json()


async def test_everyone_hears_the_others_and_never_themselves(url: str) -> None:
    room = await create_room(url, "echo", name="tones")
    async with AsyncExitStack() as stack:
        clients = await join_all(stack, url, room, list(FREQS))
        await asyncio.sleep(0.5)
        t_start = time.monotonic()
        windows = {}
        for name, client in clients.items():  # one at a time, then all at once
            t0 = time.monotonic()
            await client.say(tone(FREQS[name], 1.0)).done
            windows[name] = (t0, time.monotonic() + 0.5)
        for name, client in clients.items():
            client.say(tone(FREQS[name], 1.5))
        await asyncio.sleep(1.5)
        for _ in range(100):  # on a loaded machine the last of it may still be on its way
            if all(not c.voiced_between(time.monotonic() - 0.3) for c in clients.values()):
                break
            await asyncio.sleep(0.1)
        status, info = await room_info(url, room)
    assert status == 200 and {p["name"] for p in info["participants"]} == set(FREQS)
    assert info["agent"] == {"state": "none"} and info["policy"] == "mention_only"
    for listener, client in clients.items():
        # all the audio: each hears the two others' tones, and much less of its own
        received = client.audio_between(t_start, time.monotonic())
        own = band_db(received, FREQS[listener])
        others = {s: band_db(received, FREQS[s]) for s in FREQS if s != listener}
        voiced = len(client.voiced_between(t_start))
        # while it spoke alone: its voice in its own mix against its voice in the others'
        t0, t1 = windows[listener]
        alone = band_db(client.audio_between(t0, t1), FREQS[listener])
        in_others = min(band_db(c.audio_between(t0, t1), FREQS[listener]) for s, c in clients.items() if s != listener)
        print(f"{listener}: own voice {min(120.0, in_others - alone):.1f} dB (120 = digital silence) "
              "below what the others hear of it "
              f"({min(others.values()) - own:.1f} dB below the others overall, codec noise included); "
              f"{voiced} voiced 10 ms frames; late {client.frames_late}/{client.frames_received}")
        assert voiced >= 150, f"{listener} heard little of the others ({voiced} frames of ~350)"
        assert in_others - alone >= 40, (listener, alone, in_others)
        assert min(others.values()) - own >= 25, (listener, own, others)


async def test_leave_rejoin_and_idle_end(url: str) -> None:
    room = await create_room(url, "echo")
    async with AsyncExitStack() as stack:
        clients = await join_all(stack, url, room, ["Ann", "Bob"])
        since = time.monotonic()
        await clients["Bob"].close()
        left = await clients["Ann"].wait_event(lambda e: e["type"] == "participant-left", 10, since)
        assert left["participant_id"] == clients["Bob"].participant_id
        _, info = await room_info(url, room)
        assert [p["name"] for p in info["participants"]] == ["Ann"]
        bob = await stack.enter_async_context(
            RoomClient(url, token=room["token"], room_id=room["room_id"], name="Bob"))
        await clients["Ann"].wait_event(lambda e: e["type"] == "participant-joined"
                                        and e["participant_id"] == bob.participant_id, 10, since)
        playback = bob.say(tone(660, 0.8))
        await playback.done
        await asyncio.sleep(0.3)
        assert len(clients["Ann"].voiced_between(playback.started_at + 0.15)) >= 40
    for _ in range(40):  # PARLEY_ROOM_IDLE_S is 2 s here; allow a loaded machine 10 s
        if (status := (await room_info(url, room))[0]) != 200:
            break
        await asyncio.sleep(0.25)
    assert status == 404, "an empty room should end after PARLEY_ROOM_IDLE_S"


async def test_a_stalled_participant_does_not_stall_the_others(server) -> None:
    from signaling.keys import ROOMS

    runner, url = server
    room = await create_room(url, "echo")
    mixer_room = runner.app[ROOMS].rooms[room["room_id"]]
    async with AsyncExitStack() as stack:
        clients = await join_all(stack, url, room, list(FREQS))
        await asyncio.sleep(0.3)
        clients["Cat"].mic.stop()  # Cat's microphone stops sending RTP: a stalled peer
        await asyncio.sleep(0.5)
        before, ticks_before = clients["Bob"].frames_received, mixer_room.ticks
        legs = {p.name: p.out for p in mixer_room.participants.values()}
        delivered_before = {name: out.delivered for name, out in legs.items()}
        t_start = time.monotonic()
        await clients["Ann"].say(tone(440, 1.5)).done
        await asyncio.sleep(1.0)
        _, info = await room_info(url, room)
        elapsed = time.monotonic() - t_start
        ticks = mixer_room.ticks - ticks_before
        delivered = {name: out.delivered - delivered_before[name] for name, out in legs.items()}
    assert len(info["participants"]) == 3  # still in the room, just silent
    for name in ("Bob", "Cat"):  # Cat stalled as a speaker, yet still hears the room
        # (150 frames were sent; a room stalled by Cat would deliver none; this loaded
        # machine loses some on the way)
        assert len(clients[name].voiced_between(t_start)) >= 60, name
    # every tick of the mixer gave every participant a frame, the stalled one included; the
    # clock's rate itself depends on the loop (on this shared, loaded machine, stalls of the
    # whole process over 200 ms skip slots), so it is reported, not asserted
    print(f"ticks {ticks} in {elapsed:.2f} s; Bob received {clients['Bob'].frames_received - before}")
    assert ticks > 0 and all(n == ticks for n in delivered.values()), (ticks, delivered)


async def test_room_api_errors_and_delete(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/api/rooms", json={"persona": "echo", "policy": "loud"}) as r:
            assert r.status == 400 and (await r.json())["error"]["code"] == "bad_policy"
        async with http.post(f"{url}/api/rooms", json={"persona": "nobody"}) as r:
            assert r.status == 400 and (await r.json())["error"]["code"] == "unknown_persona"
        room = await create_room(url, "echo", policy="follow_up")
        other = await create_room(url, "echo")
        assert room["join_url"].endswith(f"/room?room={room['room_id']}#token={room['token']}")
        path = f"{url}/api/rooms/{room['room_id']}"
        async with http.get(path) as r:
            assert r.status == 401
        async with http.get(path, headers={"Authorization": f"Bearer {other['token']}"}) as r:
            assert r.status == 403
        offer = (Path(__file__).parent.parent / "sdp_offers" / "chromium-0.sdp").read_text()  # a real offer
        body = {"sdp": offer, "type": "offer", "room_id": room["room_id"], "name": "Eve"}
        async with http.post(f"{url}/api/offer", json=body,
                             headers={"Authorization": f"Bearer {other['token']}"}) as r:
            assert r.status == 403
    async with RoomClient(url, token=room["token"], room_id=room["room_id"], name="Ann") as ann:
        since = time.monotonic()
        async with aiohttp.ClientSession() as http:
            async with http.delete(path, headers={"Authorization": f"Bearer {room['token']}"}) as r:
                assert r.status == 204
            async with http.get(path, headers={"Authorization": f"Bearer {room['token']}"}) as r:
                assert r.status == 404
        for _ in range(100):  # the server hung up on Ann
            if ann.pc.connectionState in ("closed", "failed"):
                break
            await asyncio.sleep(0.1)
        assert ann.pc.connectionState in ("closed", "failed") or since < 0


@pytest.mark.parametrize("n", [1])
async def test_whip_joins_a_room(url: str, n: int) -> None:
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from media_server.agent_track import AgentTrack

    room = await create_room(url, "echo")
    async with RoomClient(url, token=room["token"], room_id=room["room_id"], name="Ann") as ann:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        mic = AgentTrack()
        pc.addTrack(mic)
        await pc.setLocalDescription(await pc.createOffer())
        headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {room['token']}"}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/whip?room={room['room_id']}&name=Whip", data=pc.localDescription.sdp,
                                 headers=headers) as r:
                assert r.status == 201
                location = r.headers["Location"]
                await pc.setRemoteDescription(RTCSessionDescription(await r.text(), "answer"))
            joined = await ann.wait_event(lambda e: e["type"] == "participant-joined" and e["name"] == "Whip", 10)
            playback = mic.play(tone(550, 1.0))
            await playback.done
            await asyncio.sleep(0.3)
            assert len(ann.voiced_between(playback.started_at + 0.2)) >= 50
            async with http.delete(f"{url}{location}") as r:
                assert r.status == 204
            left = await ann.wait_event(lambda e: e["type"] == "participant-left", 10)
            assert left["participant_id"] == joined["participant_id"]
        await pc.close()


async def test_websocket_participant_hears_and_is_heard(url: str) -> None:
    import base64

    room = await create_room(url, "echo")
    async with RoomClient(url, token=room["token"], room_id=room["room_id"], name="Ann") as ann, \
            aiohttp.ClientSession() as http, \
            http.ws_connect(f"{url}/ws?room={room['room_id']}&name=Wes",
                            protocols=("parley.v1", f"parley.token.{room['token']}")) as ws:
        joined = await ws.receive_json(timeout=10)
        while joined["type"] != "joined":
            joined = await ws.receive_json(timeout=10)
        pcm = tone(770, 1.0)
        for i in range(0, pcm.size, 960):  # 20 ms chunks in real time
            chunk = base64.b64encode(pcm[i:i + 960].astype("<i2").tobytes()).decode()
            await ws.send_json({"type": "audio-chunk", "seq": i // 960, "data": chunk, "rate": RATE})
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)
        assert len(ann.voiced_between(0)) >= 40, "Ann did not hear the WebSocket participant"
        since = time.monotonic()
        await ann.say(tone(330, 1.0)).done
        chunks = []
        while time.monotonic() - since < 6 and len(chunks) < 30:
            message = await ws.receive_json(timeout=5)
            if message["type"] == "tts-chunk":
                chunks.append(np.frombuffer(base64.b64decode(message["audio"]), "<i2"))
        _, info = await room_info(url, room)
    assert len(chunks) >= 30, "the WebSocket participant did not hear Ann"
    received = np.concatenate(chunks)
    assert band_db(received, 330) - band_db(received, 770) >= 40  # it is Ann's tone it hears
    assert {p["transport"] for p in info["participants"]} == {"webrtc", "ws"}
