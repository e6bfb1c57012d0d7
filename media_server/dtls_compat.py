"""Let chosen peer connections do DTLS on the system OpenSSL (P-224 peers, e.g. FFmpeg WHIP).

aiortc offers no public hook for its DTLS stack, so this is the one place Parley reaches into
aiortc internals (the reason and the wire capture are in ``docs/whip-interop.md``):

- ``aiortc.rtcdtlstransport.SSL`` — the pyOpenSSL module that ``RTCCertificate._create_ssl_context``
  and ``RTCDtlsTransport.start`` build their context and connection from — is replaced, once,
  by :class:`_SSLNamespace`. It hands out :mod:`media_server.openssl_dtls` objects when the
  calling task runs with :data:`_USE_SYSTEM_DTLS` set and pyOpenSSL's own objects otherwise,
  so calls that did not ask are untouched.
- :func:`system_dtls` sets that flag for the code inside it. aiortc starts ICE and DTLS in a task
  created by ``setRemoteDescription``/``setLocalDescription``; asyncio copies the context into it,
  so a peer connection answered inside ``with system_dtls():`` keeps the choice for its life.
- :func:`failure_reason` reads the OpenSSL reason of a failed handshake from the transport.

``tests/test_dtls_compat.py`` fails when aiortc changes any of this (names, the methods it calls).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import types
from collections.abc import Iterator
from typing import Any

import aiortc.rtcdtlstransport as aiortc_dtls
from aiortc import RTCPeerConnection
from OpenSSL import SSL

from media_server import openssl_dtls

logger = logging.getLogger(__name__)

_USE_SYSTEM_DTLS: contextvars.ContextVar[bool] = contextvars.ContextVar("parley_system_dtls", default=False)


class _SSLNamespace(types.SimpleNamespace):
    """Stands in for ``OpenSSL.SSL`` inside aiortc's DTLS module; everything else passes through."""

    def __getattr__(self, name: str) -> Any:
        return getattr(SSL, name)

    @staticmethod
    def Context(method: int) -> Any:  # noqa: N802 (pyOpenSSL's name)
        if _USE_SYSTEM_DTLS.get():
            return openssl_dtls.DtlsContext(method)
        return SSL.Context(method)

    @staticmethod
    def Connection(context: Any, socket: Any = None) -> Any:  # noqa: N802 (pyOpenSSL's name)
        if isinstance(context, openssl_dtls.DtlsContext):
            return openssl_dtls.DtlsConnection(context)
        return SSL.Connection(context, socket)


@functools.cache
def available() -> bool:
    """True when the system OpenSSL can take over (else calls keep aiortc's DTLS); warns once."""
    try:
        openssl_dtls.load()
    except openssl_dtls.OpenSSLUnavailable as exc:
        logger.warning("system DTLS unavailable, WHIP publishers with P-224 certificates will fail: %s", exc)
        return False
    return True


def install() -> None:
    """Put the dispatching namespace into aiortc (idempotent)."""
    namespace = vars(aiortc_dtls)  # the module's globals: what its functions look SSL up in
    if not isinstance(namespace.get("SSL"), _SSLNamespace):
        namespace["SSL"] = _SSLNamespace()


@contextlib.contextmanager
def system_dtls(enabled: bool = True) -> Iterator[bool]:
    """Peer connections answered inside this block do DTLS on the system OpenSSL.

    Yields whether that is in effect (False when disabled or no usable system OpenSSL was found).
    """
    if not enabled or not available():
        yield False
        return
    install()
    token = _USE_SYSTEM_DTLS.set(True)
    try:
        yield True
    finally:
        _USE_SYSTEM_DTLS.reset(token)


def dtls_transports(pc: RTCPeerConnection) -> list[aiortc_dtls.RTCDtlsTransport]:
    """The peer connection's DTLS transports (public API: transceivers' receivers)."""
    seen: dict[int, aiortc_dtls.RTCDtlsTransport] = {}
    for transceiver in pc.getTransceivers():
        transport = transceiver.receiver.transport
        seen.setdefault(id(transport), transport)
    return list(seen.values())


def failure_reason(pc: RTCPeerConnection) -> str:
    """Why the connection failed: ``ice``, or ``dtls`` with OpenSSL's reason when known."""
    if pc.iceConnectionState == "failed":
        return "ice: connectivity checks failed"
    for transport in dtls_transports(pc):
        if transport.state == "failed":
            connection = getattr(transport, "_ssl", None)  # internal: see the module docstring
            reason = getattr(connection, "last_error", None)
            return f"dtls: {reason or 'handshake failed'}"
    return f"connection {pc.connectionState}"
