"""A secure origin: headless Chromium calls the echo persona over https:// with a
self-signed certificate it is told to trust (by its SPKI hash) — served by
``parley serve --tls-cert/--tls-key`` itself, and through the Caddy proxy of
``infra/Caddyfile`` (HTTPS + WebSocket upgrade, the WebSocket transport)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import hashlib
import ipaddress
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench.serverproc import free_port
from parley.config import REPO_ROOT
from tests.browser import CHROMIUM, make_speech_wav, open_page
from tests.test_browser import ECHOED_JS, SENTENCE

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"headless Chromium not found at {CHROMIUM}"),
    pytest.mark.timeout(180),
]


@dataclass(frozen=True)
class Cert:
    cert: Path
    key: Path
    spki_sha256: str  # base64 SHA-256 of the public key: what Chromium's flag wants


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Cert:
    """A self-signed certificate for 127.0.0.1 and localhost, made now."""
    directory = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "parley test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return Cert(cert_path, key_path, base64.b64encode(hashlib.sha256(spki).digest()).decode())


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path, ctx: ssl.SSLContext | None,
                 timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited {proc.returncode}:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(url + "/health", timeout=1, context=ctx) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    raise AssertionError(f"{url} not healthy in {timeout} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def running(command: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A server subprocess in its own process group, terminated (then killed) afterwards."""
    with log.open("ab") as out:
        proc = subprocess.Popen(command, cwd=REPO_ROOT, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=out, start_new_session=True)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def parley_serve(port: int, *tls: str) -> list[str]:
    return [sys.executable, "-m", "parley.cli", "serve", "--host", "127.0.0.1", "--port", str(port), *tls]


async def image_healthcheck(port: int) -> int:
    """Exit status of the Dockerfile's HEALTHCHECK command against 127.0.0.1:``port``."""
    text = (REPO_ROOT / "Dockerfile").read_text()
    command = json.loads(re.search(r"HEALTHCHECK .*?CMD (\[.*?\])$", text, re.S | re.M).group(1))
    assert command[0] == "python"
    env = {**os.environ, "PARLEY_PORT": str(port)}
    proc = await asyncio.create_subprocess_exec(sys.executable, *command[1:], env=env,
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return await proc.wait()


SERVER_ENV = {"PYTHONPATH": str(REPO_ROOT), "PARLEY_PERSONA": "echo"}


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_speech_wav(tmp_path_factory.mktemp("wav") / "speech.wav", SENTENCE)


async def call_echo(url: str, cert: Cert, speech_wav: Path, transport: str) -> dict[str, Any]:
    """The page at ``url`` calls the echo persona; returns what it saw once the echo is back."""
    query = f"persona=echo&autostart=1&transport={transport}"
    async with open_page(f"{url}/?{query}", fake_mic=speech_wav,
                         extra_args=(f"--ignore-certificate-errors-spki-list={cert.spki_sha256}",)) as page:
        await page.wait_for(ECHOED_JS, timeout=40)
        result: dict[str, Any] = await page.parley()
        result["secure"] = await page.evaluate("window.isSecureContext && location.protocol")
        result["console_errors"] = [entry.text for entry in page.console_errors()]
    return result


def assert_echoed(result: dict[str, Any], transport: str) -> None:
    assert result["secure"] == "https:"  # a secure context: getUserMedia was allowed
    assert result["transport"] == transport
    assert result["errors"] == [] and result["console_errors"] == []
    speaking = [s["rms"] for s in result["stats"]["rxEnergy"] if s["state"] == "speaking"]
    assert speaking and max(speaking) > 0.02, "the echo did not come back"


async def test_parley_serves_https_itself(cert: Cert, speech_wav: Path, tmp_path: Path) -> None:
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    env = {**SERVER_ENV, "PARLEY_DATA_DIR": str(tmp_path / "data")}
    log = tmp_path / "serve.log"
    with running(parley_serve(port, "--tls-cert", str(cert.cert), "--tls-key", str(cert.key)), log, env) as p:
        await asyncio.to_thread(wait_healthy, url, p, log, ssl.create_default_context(cafile=str(cert.cert)))
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):  # untrusted: refused
            await asyncio.to_thread(urllib.request.urlopen, url + "/health", timeout=5)
        result = await call_echo(url, cert, speech_wav, "webrtc")
    assert_echoed(result, "webrtc")
    assert "serving on https://127.0.0.1" in log.read_text()


async def test_caddy_proxies_https_and_the_websocket_upgrade(cert: Cert, speech_wav: Path, tmp_path: Path) -> None:
    caddy = shutil.which("caddy")
    if caddy is None:
        pytest.skip("caddy is not installed (make setup installs it)")
    parley_port, proxy_port = free_port(), free_port()
    url = f"https://127.0.0.1:{proxy_port}"
    env = {**SERVER_ENV, "PARLEY_DATA_DIR": str(tmp_path / "data")}
    caddy_env = {"PARLEY_SITE": url, "CADDY_TLS": f"{cert.cert} {cert.key}",
                 "PARLEY_UPSTREAM": f"127.0.0.1:{parley_port}", "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path),
                 "XDG_CONFIG_HOME": str(tmp_path)}
    # the repo's Caddyfile, listening on loopback only (production binds every interface)
    config = tmp_path / "Caddyfile"
    site = "{$PARLEY_SITE:localhost} {\n"
    production = (REPO_ROOT / "infra" / "Caddyfile").read_text()
    assert site in production
    config.write_text(production.replace(site, site + "\tbind 127.0.0.1\n"))
    with running(parley_serve(parley_port), tmp_path / "serve.log", env) as p:
        await asyncio.to_thread(wait_healthy, f"http://127.0.0.1:{parley_port}", p, tmp_path / "serve.log", None)
        assert await image_healthcheck(parley_port) == 0  # the Dockerfile's HEALTHCHECK, run for real
        assert await image_healthcheck(free_port()) != 0
        with running([caddy, "run", "--config", str(config), "--adapter", "caddyfile"],
                     tmp_path / "caddy.log", caddy_env) as proxy:
            trusting = ssl.create_default_context(cafile=str(cert.cert))
            await asyncio.to_thread(wait_healthy, url, proxy, tmp_path / "caddy.log", trusting)
            with pytest.raises(urllib.error.HTTPError, match="404"):  # metrics stay inside the network
                await asyncio.to_thread(urllib.request.urlopen, url + "/metrics", timeout=5, context=trusting)
            result = await call_echo(url, cert, speech_wav, "ws")
    assert_echoed(result, "ws")
