"""Exporting a user's data takes a fresh, short-lived export token, never the session token."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from signaling.auth import TokenIssuer
from signaling.keys import SETTINGS, TOKENS


async def _session(http: aiohttp.ClientSession, url: str) -> dict:
    async with http.post(f"{url}/api/sessions", json={"persona": "echo"}) as r:
        assert r.status == 201, await r.text()
        return dict(await r.json())


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _status_code(response: aiohttp.ClientResponse) -> tuple[int, str]:
    body = await response.json()
    return response.status, body["error"]["code"]


async def test_export_needs_an_export_token_obtained_with_the_session_token(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        ana = await _session(http, url)
        export = f"{url}/api/users/{ana['user_id']}/export"
        async with http.get(export, headers=_bearer(ana["token"])) as r:  # the session token alone
            assert await _status_code(r) == (401, "export_token_required")
            assert "export-token" in (await r.json())["error"]["message"]
        async with http.get(export) as r:
            assert await _status_code(r) == (401, "export_token_required")

        async with http.post(f"{url}/api/users/{ana['user_id']}/export-token", headers=_bearer(ana["token"])) as r:
            assert r.status == 201
            issued = await r.json()
        assert 0 < issued["expires_in"] <= 60 and issued["token"] != ana["token"]
        async with http.get(export, headers=_bearer(issued["token"])) as r:
            assert r.status == 200
            data = await r.json()
        assert data["user"]["id"] == ana["user_id"]
        assert [s["id"] for s in data["sessions"]] == [ana["session_id"]]
        assert data["recordings"] == []


async def test_export_tokens_are_only_for_their_user_and_only_for_exporting(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        ana, bo = await _session(http, url), await _session(http, url)
        # no export token for somebody else, nor without a session token
        async with http.post(f"{url}/api/users/{bo['user_id']}/export-token", headers=_bearer(ana["token"])) as r:
            assert await _status_code(r) == (403, "forbidden")
        async with http.post(f"{url}/api/users/{ana['user_id']}/export-token") as r:
            assert await _status_code(r) == (401, "unauthorized")
        async with http.post(f"{url}/api/users/{ana['user_id']}/export-token", headers=_bearer(ana["token"])) as r:
            token = (await r.json())["token"]
        # Ana's export token does not open Bo's data...
        async with http.get(f"{url}/api/users/{bo['user_id']}/export", headers=_bearer(token)) as r:
            assert await _status_code(r) == (403, "forbidden")
        # ...and is no session token: it can neither change data nor start a session
        async with http.post(f"{url}/api/sessions/{ana['session_id']}/memories", json={"text": "I like tea"},
                             headers=_bearer(token)) as r:
            assert await _status_code(r) == (401, "bad_token")
        async with http.post(f"{url}/api/sessions", json={"persona": "echo"}, headers=_bearer(token)) as r:
            assert await _status_code(r) == (401, "bad_token")
        async with http.delete(f"{url}/api/users/{ana['user_id']}", headers=_bearer(token)) as r:
            assert await _status_code(r) == (401, "bad_token")


async def test_an_expired_or_forged_export_token_is_refused(server: tuple[web.AppRunner, str]) -> None:
    runner, url = server
    issuer = runner.app[TOKENS]
    async with aiohttp.ClientSession() as http:
        ana = await _session(http, url)
        export = f"{url}/api/users/{ana['user_id']}/export"
        # signed with the server's key, but already past its expiry
        expired = TokenIssuer(issuer._secret, 3600, export_ttl_s=-5).encode_export(ana["user_id"], ana["session_id"])
        async with http.get(export, headers=_bearer(expired[0])) as r:
            assert await _status_code(r) == (401, "export_token_expired")
        forged = TokenIssuer("another-secret-" + "y" * 32, 3600).encode_export(ana["user_id"], ana["session_id"])
        async with http.get(export, headers=_bearer(forged[0])) as r:
            assert await _status_code(r) == (401, "bad_token")
        assert runner.app[SETTINGS].export_token_ttl_s == issuer.export_ttl_s == 60
