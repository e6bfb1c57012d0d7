"""Secrets stay out of URLs and logs; browsers from other sites cannot drive the API."""

from __future__ import annotations

import dataclasses
import logging

import aiohttp
import pytest
from aiohttp import web

from parley.call.client import CallClient
from parley.config import Settings
from signaling.keys import TOKENS
from tests.conftest import start_server

# the detail is a word no log line could hold by chance (a number could: ports, SSRCs)
MEMORY_TEXT = "My locker code is quillfeather and I keep it under the blue vase."


async def new_session(http: aiohttp.ClientSession, url: str, **kwargs: object) -> dict:
    async with http.post(f"{url}/api/sessions", json={"persona": "echo"}, **kwargs) as r:  # type: ignore[arg-type]
        assert r.status == 201, await r.text()
        return dict(await r.json())


async def test_websocket_takes_its_token_as_a_subprotocol_never_in_the_url(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        session = await new_session(http, url)
        protocols = ("parley.v1", f"parley.token.{session['token']}")
        async with http.ws_connect(f"{url}/ws?persona=echo", protocols=protocols) as ws:
            assert ws.protocol == "parley.v1"  # the token is never echoed back
            assert await ws.receive_json(timeout=5) == {"type": "turn", "state": "listening"}
            await ws.send_json({"type": "ping", "t": 7})
            assert await ws.receive_json(timeout=5) == {"type": "pong", "t": 7}
        async with http.get(f"{url}/ws?persona=echo&token={session['token']}") as r:
            assert r.status == 401 and (await r.json())["error"]["code"] == "token_in_url"


@pytest.mark.parametrize(
    ("origin", "allowed", "status"),
    [("http://evil.example", "", 403), ("null", "", 403), ("https://app.example", "https://app.example", 201),
     ("SAME", "", 201), (None, "", 201)],
)
async def test_origin_is_checked_on_state_changing_routes_and_ws(
    settings: Settings, origin: str | None, allowed: str, status: int
) -> None:
    runner, url = await start_server(dataclasses.replace(settings, allowed_origins=allowed))
    try:
        headers = {} if origin is None else {"Origin": url if origin == "SAME" else origin}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/api/sessions", json={"persona": "echo"}, headers=headers) as r:
                assert r.status == status, await r.text()
                if status == 403:
                    assert (await r.json())["error"]["code"] == "bad_origin"
            async with http.get(f"{url}/ws?persona=echo", headers={**headers, "Connection": "Upgrade",
                                                                   "Upgrade": "websocket"}) as r:
                assert (r.status == 403) == (status == 403), r.status
            async with http.get(f"{url}/api/personas", headers=headers) as r:
                assert r.status == 200  # reads are not state-changing
    finally:
        await runner.cleanup()


async def test_no_token_secret_or_memory_text_in_the_logs_of_a_full_run(
    server: tuple[web.AppRunner, str], caplog: pytest.LogCaptureFixture
) -> None:
    runner, url = server
    caplog.set_level(logging.DEBUG)
    async with aiohttp.ClientSession() as http:
        session = await new_session(http, url)
        auth = {"Authorization": f"Bearer {session['token']}"}
        await new_session(http, url, headers=auth)
        async with http.post(f"{url}/api/sessions/{session['session_id']}/memories", json={"text": MEMORY_TEXT},
                             headers=auth) as r:
            assert r.status == 201
        async with http.post(f"{url}/api/users/{session['user_id']}/export-token", headers=auth) as r:
            export_token = (await r.json())["token"]
        async with http.get(f"{url}/api/users/{session['user_id']}/export",
                            headers={"Authorization": f"Bearer {export_token}"}) as r:
            assert MEMORY_TEXT in await r.text()
        async with http.ws_connect(f"{url}/ws?persona=echo",
                                   protocols=("parley.v1", f"parley.token.{session['token']}")) as ws:
            await ws.send_json({"type": "text", "text": MEMORY_TEXT})
            await ws.receive_json(timeout=5)
        async with http.post(f"{url}/api/offer", json={"sdp": "v=0\r\nbroken", "type": "offer"}, headers=auth) as r:
            assert r.status == 400
        async with http.post(f"{url}/api/sessions", json={}, headers={"Authorization": "Bearer " + "x" * 40}) as r:
            assert r.status == 401
    async with CallClient(url, "echo", token=session["token"]) as client:
        client.send({"type": "text", "text": MEMORY_TEXT})
        await client.wait_event(lambda e: e["type"] == "llm-done", timeout=10)
    secret = runner.app[TOKENS]._secret  # the signing key itself
    logged = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert len(caplog.records) > 20  # the run did log
    for needle, what in ((session["token"], "token"), (export_token, "export token"), (secret, "signing secret"),
                         (MEMORY_TEXT, "memory text"),
                         ("quillfeather", "memory detail")):
        assert needle not in logged, f"the {what} appears in the logs"
