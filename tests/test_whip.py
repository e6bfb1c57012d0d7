"""WHIP protocol details (RFC 9725) with a real aiortc publisher: headers, CORS preflight,
Bearer tokens, trickle ICE over PATCH, and which DTLS stack a WHIP peer gets."""

from __future__ import annotations

import dataclasses
import logging
import time

import aiohttp
import pytest
from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from OpenSSL import SSL

from media_server.agent_track import AgentTrack
from media_server.dtls_compat import dtls_transports
from media_server.openssl_dtls import DtlsConnection
from parley.config import Settings
from signaling.keys import CALLS
from signaling.whip import WHIP, etag, parse_sdpfrag
from tests.conftest import start_server
from tests.test_whip_ffmpeg import error_of, new_session, only_whip_call, sample, wait_until

SDP = {"Content-Type": "application/sdp"}
FRAG = {"Content-Type": "application/trickle-ice-sdpfrag"}


async def publisher() -> RTCPeerConnection:
    """An aiortc WHIP client with its offer ready (silence on a paced track)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(AgentTrack())
    await pc.setLocalDescription(await pc.createOffer())
    return pc


def without_candidates(sdp: str) -> tuple[str, list[str]]:
    """The offer with its candidates taken out (to be trickled), and those candidate lines."""
    lines = sdp.splitlines()
    candidates = [line for line in lines if line.startswith("a=candidate:")]
    kept = [line for line in lines if not line.startswith(("a=candidate:", "a=end-of-candidates"))]
    return "\r\n".join(kept) + "\r\n", candidates


def sdpfrag(offer: str, candidates: list[str]) -> str:
    ufrag = next(line for line in offer.splitlines() if line.startswith("a=ice-ufrag:"))
    pwd = next(line for line in offer.splitlines() if line.startswith("a=ice-pwd:"))
    return "\r\n".join([ufrag, pwd, "m=audio 9 UDP/TLS/RTP/SAVPF 111", "a=mid:0", *candidates,
                        "a=end-of-candidates"]) + "\r\n"


async def test_post_headers_trickle_patch_and_media_over_system_dtls(server: tuple[web.AppRunner, str]) -> None:
    runner, url = server
    pc = await publisher()
    offer, candidates = without_candidates(pc.localDescription.sdp)
    assert candidates
    frames0 = sample("parley_frames_received_total")
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/whip?persona=echo", data=offer, headers=SDP) as r:
                assert r.status == 201 and r.content_type == "application/sdp"
                location, tag = r.headers["Location"], r.headers["ETag"]
                assert r.headers["Accept-Patch"] == "application/trickle-ice-sdpfrag"
                assert r.headers["Access-Control-Allow-Origin"] == "*"
                assert "Location" in r.headers["Access-Control-Expose-Headers"]
                answer = await r.text()
            call = only_whip_call(runner)
            assert location == f"/whip/{call.id}" and tag == etag(call.id)
            async with http.patch(f"{url}{location}", data=sdpfrag(offer, candidates),
                                  headers={**FRAG, "If-Match": tag}) as r:
                assert r.status == 204, await r.text()
            ice = dtls_transports(call.pc)[0].transport
            ports = {c.port for c in ice.getRemoteCandidates()}
            assert {int(line.split()[5]) for line in candidates} <= ports  # the trickled ones
            await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
            await wait_until(lambda: call.connected, timeout=15, what="the WHIP peer to connect")
            await wait_until(lambda: sample("parley_frames_received_total") - frames0 >= 25, timeout=10,
                             what="audio frames at the server")
            # the WHIP peer did its DTLS on the system OpenSSL (P-224-capable)
            assert isinstance(dtls_transports(call.pc)[0]._ssl, DtlsConnection)
            async with http.delete(f"{url}{location}") as r:
                assert r.status == 204
    finally:
        await pc.close()


async def test_browser_calls_keep_aiortcs_own_dtls(server: tuple[web.AppRunner, str]) -> None:
    """Only WHIP peers are switched: ``/api/offer`` calls keep pyOpenSSL."""
    runner, url = server
    pc = await publisher()
    try:
        async with aiohttp.ClientSession() as http:
            body = {"sdp": pc.localDescription.sdp, "type": "offer", "persona": "echo"}
            async with http.post(f"{url}/api/offer", json=body) as r:
                answer = await r.json()
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        call = runner.app[CALLS].calls[answer["call_id"]]
        await wait_until(lambda: call.connected, timeout=15, what="the call to connect")
        assert isinstance(dtls_transports(call.pc)[0]._ssl, SSL.Connection)
    finally:
        await pc.close()


async def test_options_preflight_and_ice_server_links(settings: Settings) -> None:
    urls = "stun:stun.example.net:3478,turn:turn.example.net:3478?transport=udp"
    runner, url = await start_server(dataclasses.replace(settings, ice_servers=urls))
    try:
        async with aiohttp.ClientSession() as http, http.options(
            f"{url}/whip", headers={"Origin": "https://studio.example", "Access-Control-Request-Method": "POST"}
        ) as r:
            assert r.status == 204
            assert r.headers["Access-Control-Allow-Origin"] == "*"
            assert "POST" in r.headers["Access-Control-Allow-Methods"]
            assert {"Authorization", "Content-Type"} <= {
                h.strip() for h in r.headers["Access-Control-Allow-Headers"].split(",")}
            assert r.headers.getall("Link") == [
                '<stun:stun.example.net:3478>; rel="ice-server"',
                '<turn:turn.example.net:3478?transport=udp>; rel="ice-server"',
            ]
    finally:
        await runner.cleanup()


async def test_patch_errors_and_bearer_tokens(server: tuple[web.AppRunner, str]) -> None:
    runner, url = server
    pc = await publisher()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/whip?persona=echo", data=pc.localDescription.sdp,
                                 headers={**SDP, "Authorization": "Bearer not-a-token"}) as r:
                assert (await error_of(r))[:2] == (401, "bad_token")
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
            session = await new_session(http, url, "echo")
            async with http.post(f"{url}/whip", data=pc.localDescription.sdp,
                                 headers={**SDP, "Authorization": f"Bearer {session['token']}"}) as r:
                assert r.status == 201 and r.headers["X-Parley-Session"] == session["session_id"]
                location = r.headers["Location"]
            frag = sdpfrag(pc.localDescription.sdp, [])
            async with http.patch(f"{url}{location}", data=frag, headers={**FRAG, "If-Match": '"stale"'}) as r:
                assert (await error_of(r))[:2] == (412, "precondition_failed")
            async with http.patch(f"{url}{location}", data=frag, headers=SDP) as r:
                assert (await error_of(r))[:2] == (415, "unsupported_media_type")
            restart = frag.replace("a=ice-ufrag:", "a=ice-ufrag:new")
            async with http.patch(f"{url}{location}", data=restart, headers=FRAG) as r:
                assert (await error_of(r))[:2] == (422, "ice_restart_unsupported")
            async with http.patch(f"{url}/whip/nosuchsession", data=frag, headers=FRAG) as r:
                assert (await error_of(r))[:2] == (404, "not_found")
            async with http.delete(f"{url}{location}") as r:
                assert r.status == 204
            async with http.patch(f"{url}{location}", data=frag, headers=FRAG) as r:
                assert (await error_of(r))[:2] == (404, "session_ended")
    finally:
        await pc.close()


def test_parse_sdpfrag() -> None:
    text = ("a=ice-ufrag:abcd\r\na=ice-pwd:secret\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n"
            "a=candidate:1 1 udp 2130706431 192.0.2.1 5000 typ host\r\na=end-of-candidates\r\n")
    assert parse_sdpfrag(text) == ("abcd", "0", ["1 1 udp 2130706431 192.0.2.1 5000 typ host"], True)


def test_ended_sessions_are_remembered_with_a_bound() -> None:
    from signaling import whip

    sessions = whip.WhipSessions()
    for i in range(whip.ENDED_KEEP + 5):
        sessions._remember(f"s{i}", "hung up")
    assert len(sessions.ended) == whip.ENDED_KEEP and "s0" not in sessions.ended
    assert time.monotonic() - sessions.ended[f"s{whip.ENDED_KEEP + 4}"].at < 5


async def test_an_ice_failure_is_logged_once_counted_and_cleaned_up(
    server: tuple[web.AppRunner, str], caplog: pytest.LogCaptureFixture
) -> None:
    """The publisher posts its offer and goes away: Parley's checks get no answer."""
    caplog.set_level(logging.WARNING, logger="signaling.whip")
    runner, url = server
    pc = await publisher()
    failures0 = sample("parley_whip_failures_total", stage="ice")
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/whip?persona=echo", data=pc.localDescription.sdp, headers=SDP) as r:
            location = r.headers["Location"]
        await pc.close()  # gone before any connectivity check could succeed
        resource_id = location.rsplit("/", 1)[1]
        await wait_until(lambda: resource_id in runner.app[WHIP].ended, timeout=40, what="the ICE failure")
        await wait_until(lambda: not runner.app[CALLS].calls, timeout=10, what="the call to close")
        assert sample("parley_whip_failures_total", stage="ice") == failures0 + 1
        logged = [r.getMessage() for r in caplog.records if resource_id in r.getMessage()]
        assert len(logged) == 1 and "failed: ice" in logged[0], logged
        async with http.delete(f"{url}{location}") as r:
            status, code, message = await error_of(r)
        assert (status, code) == (404, "session_ended") and "ice" in message
