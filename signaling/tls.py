"""HTTPS for ``parley serve --tls-cert/--tls-key``.

Browsers grant the microphone only to a secure origin (https, or http://localhost), so a
phone on the LAN needs TLS to call the server. A reverse proxy (``infra/Caddyfile``) is the
other way; this one needs no extra process.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from parley.config import Settings


def server_context(settings: Settings) -> ssl.SSLContext | None:
    """The server's TLS context, or None for plain HTTP; a bad file fails start-up, naming it."""
    if not settings.tls_cert:
        return None
    for env, path in (("PARLEY_TLS_CERT", settings.tls_cert), ("PARLEY_TLS_KEY", settings.tls_key)):
        if not Path(path).is_file():
            raise ValueError(f"{env}={path}: no such file")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(settings.tls_cert, settings.tls_key)
    except ssl.SSLError as exc:
        raise ValueError(f"PARLEY_TLS_CERT/PARLEY_TLS_KEY cannot be loaded as a PEM pair: {exc.reason}") from exc
    return ctx


def scheme(settings: Settings) -> str:
    return "https" if settings.tls_cert else "http"
