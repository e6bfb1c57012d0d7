"""A phone joins a room: ``sip:room-ID@host`` (sipp), or the room dials it in (baresip).

Real server with its SIP listener on loopback, a real WebRTC participant, and sipp placing
a G.711 call to ``room-<id>``: while the call lasts the room lists the phone as a
participant with transport "sip"; the WebRTC participant hears the phone's recorded speech
through the mixer and sees it join and leave; the phone is sent the room's mix all along;
its BYE takes it out of the room. A call to a room that does not exist gets 404. Dialling
out with ``room_id`` puts an auto-answering baresip in the room, both ways.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from parley.call.room import RoomClient, create_room
from parley.config import Settings
from pipeline.audio import RATE, resample, rms_dbfs
from signaling.keys import SIP
from tests.conftest import start_server
from tests.rooms.test_rooms import band_db, tone
from tests.sip.conftest import run_sipp, sip_settings_for
from tests.sip.test_baresip import answering_baresip, read_wav, wait_for


@pytest.fixture
async def sip_server(tmp_path: Path, database_url: str) -> AsyncIterator[tuple[web.AppRunner, str, Settings]]:
    settings = sip_settings_for(tmp_path / "data", database_url)
    runner, url = await start_server(settings)
    try:
        yield runner, url, settings
    finally:
        await runner.cleanup()


async def participants(http: aiohttp.ClientSession, url: str, room: dict[str, Any]) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {room['token']}"}
    async with http.get(f"{url}/api/rooms/{room['room_id']}", headers=headers) as r:
        assert r.status == 200
        return list((await r.json())["participants"])


async def test_a_phone_call_to_room_id_joins_the_room(sip_server, tmp_path: Path) -> None:
    runner, url, settings = sip_server
    sip = runner.app[SIP]
    room = await create_room(url, "echo")
    async with RoomClient(url, token=room["token"], room_id=room["room_id"], name="Ann") as ann, \
            aiohttp.ClientSession() as http:
        t0 = time.monotonic()
        call = asyncio.create_task(run_sipp("call_g711.xml", settings.sip_port, tmp_path,
                                            service=f"room-{room['room_id']}", timeout_s=25))
        phone: list[dict[str, Any]] = []
        for _ in range(100):  # bounded: the INVITE is answered within a second or two
            phone = [p for p in await participants(http, url, room) if p["transport"] == "sip"]
            if phone or call.done():
                break
            await asyncio.sleep(0.1)
        assert [p["name"] for p in phone] == ["sipp"], phone  # the From display name
        run = await call
        assert run.returncode == 0, run.output
        after = await participants(http, url, room)
    assert [p["transport"] for p in after] == ["webrtc"]  # the BYE took the phone out
    heard = len(ann.voiced_between(t0))
    assert heard >= 200, f"Ann heard {heard} voiced 10 ms frames of the phone's 7 s of speech"
    joined = [e for _, e in ann.events if e["type"] == "participant-joined" and e.get("name") == "sipp"]
    left = [e for _, e in ann.events if e["type"] == "participant-left" and e.get("name") == "sipp"]
    assert joined and left and joined[0]["participant_id"] == phone[0]["id"] == left[0]["participant_id"]
    leg = sip.finished[-1]
    assert leg.id == phone[0]["id"] and leg.remote_bye
    assert leg.packets_in > 230 and leg.packets_out > 350  # 7 s in; the room's mix out all along
    assert sip.stats["errors"] == 0


async def test_a_phone_call_to_an_unknown_room_gets_404(sip_server, tmp_path: Path) -> None:
    runner, _, settings = sip_server
    run = await run_sipp("call_g711.xml", settings.sip_port, tmp_path, service="room-nosuchroom", timeout_s=10)
    assert run.returncode != 0
    assert "SIP/2.0 404 Not Found" in run.messages
    assert not runner.app[SIP].dialogs


async def test_a_room_dials_a_phone_in(sip_server, tmp_path: Path) -> None:
    runner, url, _ = sip_server
    proc, listen = await answering_baresip(tmp_path, "Hello everyone, I am on the phone.")
    room = await create_room(url, "echo")
    other = await create_room(url, "echo")
    try:
        async with RoomClient(url, token=room["token"], room_id=room["room_id"], name="Ann") as ann, \
                aiohttp.ClientSession() as http:
            await asyncio.sleep(1.0)  # baresip binds its SIP port
            request = {"to": f"sip:tester@{listen}", "room_id": room["room_id"]}
            async with http.post(f"{url}/api/sip/calls", json=request,
                                 headers={"Authorization": f"Bearer {other['token']}"}) as r:
                assert r.status == 403  # another room's token does not dial into this one
            t0 = time.monotonic()
            async with http.post(f"{url}/api/sip/calls", json=request,
                                 headers={"Authorization": f"Bearer {room['token']}"}) as r:
                body = await r.json()
                assert r.status == 201, body
            phone = [p for p in await participants(http, url, room) if p["transport"] == "sip"]
            assert [(p["id"], p["name"]) for p in phone] == [(body["participant_id"], "tester")]
            await wait_for(lambda: len(ann.voiced_between(t0)) >= 100, 20, "Ann hearing the phone")
            await ann.say(tone(440, 2.0)).done  # the phone hears Ann
            await asyncio.sleep(0.5)
            await runner.app[SIP].by_call[body["participant_id"]].call.close("test done")  # BYE
            await asyncio.sleep(0.5)
            after = await participants(http, url, room)
    finally:
        proc.terminate()
        out, _ = await proc.communicate()
    assert [p["name"] for p in after] == ["Ann"]
    dumps = sorted((tmp_path / "records").glob("*-dec.wav"))
    assert dumps, out.decode(errors="replace")[-2000:]
    heard, rate = read_wav(dumps[-1])
    assert rms_dbfs(heard) > -50, "the phone heard nothing of the room"
    assert band_db(resample(heard, rate, RATE), 440) - band_db(resample(heard, rate, RATE), 1500) >= 20
