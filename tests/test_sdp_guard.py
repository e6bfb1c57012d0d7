"""Offers are checked before aiortc sees them: a corpus of real offers (aiortc peers of several
shapes, headless Chromium's) and thousands of mutations of them are each either answered by a
real aiortc peer or refused with a 400 — never an exception out of aiortc, never a 500."""

from __future__ import annotations

import logging
import random
import re

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack

from bench.sdp_corpus import aiortc_offers, corpus, mutate, stored_offers
from signaling.errors import ApiError
from signaling.sdp_guard import check_offer

MUTATIONS = 600


async def answer(sdp: str) -> None:
    """What the server does with an offer, on a real aiortc peer."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        pc.addTrack(AudioStreamTrack())
        await pc.setLocalDescription(await pc.createAnswer())
    finally:
        await pc.close()


@pytest.fixture
async def offers() -> dict[str, str]:
    return await corpus()


def line_edit(sdp: str, drop: str = "", replace: tuple[str, str] | None = None) -> str:
    lines = [x for x in sdp.split("\r\n") if not (drop and x.startswith(drop))]
    if replace:
        lines = [replace[1] if x.startswith(replace[0]) else x for x in lines]
    return "\r\n".join(lines)


def crashers(offer: str) -> dict[str, str]:
    """Offers that made aiortc raise out of the old handler (the fuzzer's 500s)."""
    return {
        "AssertionError (payload type 300)": re.sub(r"(?m)^(m=audio \d+ \S+) \d+", r"\1 300", offer, count=1),
        "'NoneType' has no attribute 'role' (no a=setup)": line_edit(offer, drop="a=setup"),
        "'NoneType' has no attribute 'split' (bare a=fingerprint)":
            line_edit(offer, replace=("a=fingerprint", "a=fingerprint")),
        "None is not in list (no direction)": line_edit(offer, drop="a=sendrecv"),
        "StopIteration (fmtp for an unknown codec)":
            re.sub(r"(?m)^(a=mid:.*)$", r"\1\r\na=fmtp:77 x=1", offer, count=1),
    }


async def test_every_real_offer_passes_and_is_answerable(offers: dict[str, str]) -> None:
    assert len(stored_offers()) >= 1, "tests/sdp_offers holds the captured Chromium offers"
    assert len(offers) >= 8
    for name, sdp in offers.items():
        check_offer(sdp)
        await answer(sdp)  # and aiortc really answers it
        assert name


async def test_mutated_offers_are_refused_or_answered(offers: dict[str, str]) -> None:
    rng = random.Random(16)
    names = sorted(offers)
    refused = answered = 0
    for i in range(MUTATIONS):
        sdp = mutate(offers[names[i % len(names)]], rng)
        try:
            check_offer(sdp)
        except ApiError as exc:
            assert (exc.status, exc.code) == (400, "bad_sdp") and exc.message
            refused += 1
            continue
        await answer(sdp)  # whatever the guard lets through, aiortc must handle
        answered += 1
    assert refused > MUTATIONS // 3 and answered > MUTATIONS // 10, (refused, answered)


async def test_known_crashers_are_400_on_both_offer_routes(url: str, caplog: pytest.LogCaptureFixture) -> None:
    offer = (await aiortc_offers())["aiortc-audio-dc"]
    async with aiohttp.ClientSession() as http:
        for why, sdp in crashers(offer).items():
            async with http.post(f"{url}/api/offer", json={"sdp": sdp, "type": "offer"}) as r:
                assert r.status == 400, (why, r.status, await r.text())
                assert (await r.json())["error"]["code"] == "bad_sdp"
            async with http.post(f"{url}/whip", data=sdp.encode(), headers={"Content-Type": "application/sdp"}) as r:
                assert r.status == 400, (why, r.status, await r.text())
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    ("content_type", "body", "status", "code"),
    [
        ("application/sdp; charset=nonsense-42", b"v=0\r\n", 415, "unsupported_charset"),
        ("application/sdp; charset=utf-16", "v=0\r\n".encode("utf-16"), 415, "unsupported_charset"),
        ("application/sdp; charset=utf-8", b"v=0\r\n\xff\xfe\xc3", 400, "bad_encoding"),
        ("application/sdp", b"v=0\r\no=- \x80\x81 0 IN IP4 0.0.0.0\r\n", 400, "bad_encoding"),
        ("application/sdp; charset=UTF-8", b"v=0\r\n\x00\x01", 400, "bad_sdp"),
        ("application/json; charset=nonsense", b'{"sdp": "v=0", "type": "offer"}', 415, "unsupported_charset"),
        ("application/json", b'{"sdp": "\xff", "type": "offer"}', 400, "bad_encoding"),
        ("application/json", b"[" * 100_000, 400, "bad_json"),
    ],
)
async def test_charsets_and_bytes_are_4xx(url: str, content_type: str, body: bytes, status: int, code: str) -> None:
    path = "/whip" if "sdp" in content_type else "/api/offer"
    async with aiohttp.ClientSession() as http, \
            http.post(f"{url}{path}", data=body, headers={"Content-Type": content_type}) as r:
        assert r.status == status, await r.text()
        assert (await r.json())["error"]["code"] == code


async def test_a_good_offer_still_connects_after_the_bad_ones(url: str, offers: dict[str, str]) -> None:
    async with aiohttp.ClientSession() as http:
        for why, sdp in crashers(offers["aiortc-audio-dc"]).items():
            async with http.post(f"{url}/api/offer", json={"sdp": sdp, "type": "offer"}) as r:
                assert r.status == 400, why
        async with http.post(f"{url}/api/offer", json={"sdp": offers["chromium-0"], "type": "offer"}) as r:
            assert r.status == 200
            assert (await r.json())["sdp"].startswith("v=0")
