"""Every route answers bad input with a 4xx JSON error — never a 500, never a crash."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

OFFER_PREFIX = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
BROKEN_AUDIO = OFFER_PREFIX + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nbroken"
PLAIN_RTP = OFFER_PREFIX + "m=audio 9 RTP/AVP 0\r\n"
#: a real offer (headless Chromium's): requests that must fail for another reason carry it,
#: since an offer is checked before any session is touched
CHROMIUM_OFFER = (Path(__file__).parent / "sdp_offers" / "chromium-0.sdp").read_text()
SDP = {"Content-Type": "application/sdp"}
JSON = {"Content-Type": "application/json"}


async def error_of(response: aiohttp.ClientResponse) -> tuple[int, str]:
    body = await response.json()
    assert set(body["error"]) == {"code", "message"}, body
    assert body["error"]["message"]
    return response.status, body["error"]["code"]


async def session(http: aiohttp.ClientSession, url: str, persona: str = "echo") -> dict:
    async with http.post(f"{url}/api/sessions", json={"persona": persona}) as r:
        assert r.status == 201
        return await r.json()


async def test_health_metrics_personas_and_page(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/health") as r:
            assert r.status == 200 and (await r.json())["status"] == "ok"
        async with http.get(f"{url}/metrics") as r:
            assert r.status == 200 and "parley_calls_active" in await r.text()
        async with http.get(f"{url}/api/personas") as r:
            personas = await r.json()
        assert {"socrates", "holmes", "storyteller", "echo"} <= {p["id"] for p in personas}
        assert all(set(p) == {"id", "name", "description", "voice", "plot_nodes"} for p in personas)
        async with http.get(f"{url}/") as r:
            assert r.status == 200 and 'id="persona"' in await r.text()


async def test_session_token_keeps_user(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        first = await session(http, url)
        assert set(first) == {"session_id", "user_id", "token", "expires_at", "ice_servers"}
        headers = {"Authorization": f"Bearer {first['token']}"}
        async with http.post(f"{url}/api/sessions", json={"persona": "socrates"}, headers=headers) as r:
            second = await r.json()
    assert second["user_id"] == first["user_id"]
    assert second["session_id"] != first["session_id"]


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "code"),
    [
        ("/api/sessions", {"data": "{not json", "headers": {"Content-Type": "application/json"}}, 400, "bad_json"),
        ("/api/sessions", {"json": ["a", "list"]}, 400, "bad_json"),
        ("/api/sessions", {"json": {"persona": "nobody"}}, 400, "unknown_persona"),
        ("/api/sessions", {"json": {"persona": 5}}, 400, "unknown_persona"),
        ("/api/sessions", {"data": "persona=echo"}, 415, "unsupported_media_type"),
        ("/api/sessions", {"json": {}, "headers": {"Authorization": "Bearer nope"}}, 401, "bad_token"),
        ("/api/sessions", {"json": {}, "headers": {"Authorization": "Basic abc"}}, 401, "bad_token"),
        ("/api/offer", {"json": {"sdp": "hello", "type": "offer"}}, 400, "bad_sdp"),
        ("/api/offer", {"json": {"sdp": OFFER_PREFIX, "type": "answer"}}, 400, "bad_sdp"),
        ("/api/offer", {"json": {"sdp": OFFER_PREFIX, "type": "offer"}}, 400, "bad_sdp"),
        ("/api/offer", {"json": {"sdp": BROKEN_AUDIO, "type": "offer"}}, 400, "bad_sdp"),
        ("/api/offer", {"json": {"sdp": CHROMIUM_OFFER, "type": "offer", "persona": "x"}},
         400, "unknown_persona"),
        ("/api/offer", {"json": {"sdp": 42, "type": "offer"}}, 400, "bad_sdp"),
        ("/api/offer", {"json": {"sdp": CHROMIUM_OFFER, "type": "offer", "session_id": "x"}}, 401, "unauthorized"),
        ("/api/offer", {"data": "x" * 300_000, "headers": {"Content-Type": "application/json"}}, 413, "body_too_large"),
        ("/whip", {"data": OFFER_PREFIX, "headers": {"Content-Type": "text/plain"}}, 415, "unsupported_media_type"),
        ("/whip", {"data": "garbage", "headers": SDP}, 400, "bad_sdp"),
        ("/whip", {"data": PLAIN_RTP, "headers": SDP}, 400, "bad_sdp"),
    ],
)
async def test_bad_input_is_a_json_4xx(url: str, path: str, kwargs: dict, status: int, code: str) -> None:
    async with aiohttp.ClientSession() as http, http.post(f"{url}{path}", **kwargs) as r:
        assert await error_of(r) == (status, code)


async def test_token_must_match_session(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        mine, other = await session(http, url), await session(http, url)
        body = {"sdp": CHROMIUM_OFFER, "type": "offer", "session_id": other["session_id"]}
        headers = {"Authorization": f"Bearer {mine['token']}"}
        async with http.post(f"{url}/api/offer", json=body, headers=headers) as r:
            assert await error_of(r) == (403, "forbidden")


async def test_unknown_routes_methods_and_calls(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/nope") as r:
            assert await error_of(r) == (404, "not_found")
        async with http.get(f"{url}/../secret.key") as r:
            assert r.status == 404
        async with http.delete(f"{url}/api/personas") as r:
            assert await error_of(r) == (405, "method_not_allowed")
        async with http.delete(f"{url}/whip/0123") as r:
            assert await error_of(r) == (404, "not_found")
        async with http.get(f"{url}/ws?token=forged") as r:
            assert await error_of(r) == (401, "token_in_url")
        async with http.get(f"{url}/ws", headers={"Sec-WebSocket-Protocol": "parley.v1, parley.token.forged"}) as r:
            assert await error_of(r) == (401, "bad_token")
        async with http.get(f"{url}/ws?persona=nobody") as r:
            assert await error_of(r) == (400, "unknown_persona")


async def test_websocket_rejects_bad_events_but_stays_up(url: str) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{url}/ws?persona=echo") as ws:
        first = await ws.receive_json(timeout=5)
        assert first == {"type": "turn", "state": "listening"}
        for bad in ("not json", "[1, 2]", '{"type": "audio-chunk", "data": "***", "rate": 48000}',
                    '{"type": "audio-chunk", "data": "AAAA", "rate": 12345}', '{"type": "warp"}'):
            await ws.send_str(bad)
            reply = await ws.receive_json(timeout=5)
            assert reply["type"] == "error" and reply["code"] in {"bad_event", "bad_audio"}, reply
        await ws.send_json({"type": "ping", "t": 1})
        assert await ws.receive_json(timeout=5) == {"type": "pong", "t": 1}
