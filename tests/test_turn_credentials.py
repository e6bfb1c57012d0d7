"""TURN REST credentials: valid HMACs that expire, in ``POST /api/sessions``, accepted by a
real coturn (infra/coturn/turnserver.conf) and refused once expired."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aioice import stun
from aioice.turn import create_turn_endpoint

from bench.serverproc import free_port
from parley.config import REPO_ROOT, Settings
from signaling import turn_credentials as tc
from tests.conftest import start_server

SECRET = "s3cret-turn-key-for-tests"


def test_credential_is_the_hmac_of_its_username_and_expires() -> None:
    now = 1_800_000_000
    cred = tc.issue(SECRET, "user-42", ttl_s=600, now=now)
    assert cred.username == f"{now + 600}:user-42"
    expected = base64.b64encode(hmac.new(SECRET.encode(), cred.username.encode(), hashlib.sha1).digest())
    assert cred.credential == expected.decode()
    assert tc.verify(SECRET, cred.username, cred.credential, now=now + 599)
    assert not tc.verify(SECRET, cred.username, cred.credential, now=now + 600)  # expired
    assert not tc.verify("other-secret", cred.username, cred.credential, now=now)
    assert not tc.verify(SECRET, f"{now + 6000}:user-42", cred.credential, now=now)  # expiry edited
    assert tc.issue(SECRET, "a:b c", 60, now=now).username == f"{now + 60}:a_b_c"  # one colon only


def test_turn_urls_without_the_secret_are_refused() -> None:
    with pytest.raises(ValueError, match="PARLEY_TURN_SECRET"):
        Settings.from_env({"PARLEY_TURN_URLS": "turn:turn.example.org:3478"})
    assert SECRET not in repr(Settings(turn_secret=SECRET))


async def test_sessions_carry_a_fresh_turn_login_and_never_the_secret(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = Settings(data_dir=str(tmp_path), persona="echo", database_url=database_url,
                        ice_servers="stun:stun.example.org:3478", turn_secret=SECRET, turn_ttl_s=120,
                        turn_urls="turn:turn.example.org:3478?transport=udp,turns:turn.example.org:443")
    runner, url = await start_server(settings)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/api/sessions", json={"persona": "echo"}) as r:
                assert r.status == 201
                raw = await r.text()
                body = await r.json()
            async with http.get(f"{url}/") as r:
                page = await r.text()
    finally:
        await runner.cleanup()
    stun_entry, turn = body["ice_servers"]
    assert stun_entry == {"urls": "stun:stun.example.org:3478"}
    assert turn["urls"] == ["turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:443"]
    expiry, user = turn["username"].split(":")
    assert user == body["user_id"]
    assert 0 < int(expiry) - time.time() <= 120
    assert tc.verify(SECRET, turn["username"], turn["credential"])
    assert SECRET not in raw and SECRET not in page and SECRET not in caplog.text


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """coturn with the repo's config, on loopback, with SECRET as its static-auth-secret."""
    binary = shutil.which("turnserver")
    if binary is None:
        pytest.skip("coturn is not installed (make setup installs it)")
    port = free_port()
    log = (tmp_path / "turn.log").open("w")
    proc = subprocess.Popen(
        [binary, "-c", str(REPO_ROOT / "infra/coturn/turnserver.conf"), f"--static-auth-secret={SECRET}",
         "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1", f"--listening-port={port}",
         f"--userdb={tmp_path / 'turndb'}", f"--pidfile={tmp_path / 'turn.pid'}"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while "Total General servers" not in (tmp_path / "turn.log").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "turn.log").read_text()
            time.sleep(0.05)
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


async def allocate(server: tuple[str, int], username: str, password: str) -> tuple[str, int]:
    transport, _ = await asyncio.wait_for(
        create_turn_endpoint(asyncio.DatagramProtocol, server, username, password, lifetime=60), 10)
    try:
        return transport.get_extra_info("sockname")
    finally:
        transport.close()


async def test_coturn_relays_for_a_fresh_credential_and_refuses_an_expired_one(coturn: tuple[str, int]) -> None:
    fresh = tc.issue(SECRET, "caller", ttl_s=300)
    relayed = await allocate(coturn, fresh.username, fresh.credential)
    assert relayed[0] == "127.0.0.1" and 49160 <= relayed[1] <= 49200  # a relay from the configured range

    expired = tc.issue(SECRET, "caller", ttl_s=60, now=time.time() - 3600)
    with pytest.raises(stun.TransactionFailed, match="401"):
        await allocate(coturn, expired.username, expired.credential)
    forged = tc.issue("not-the-secret", "caller", ttl_s=300)
    with pytest.raises(stun.TransactionFailed, match="401"):
        await allocate(coturn, forged.username, forged.credential)
