"""The system-OpenSSL DTLS workaround: the root cause reproduced in memory, the replacement's
handshake, and guards that fail when aiortc changes what ``media_server.dtls_compat`` relies on."""

from __future__ import annotations

import inspect
import re
from typing import Any

import aiortc.rtcdtlstransport as aiortc_dtls
import pytest
from aiortc.rtcdtlstransport import SRTP_PROFILES, RTCCertificate, RTCDtlsTransport
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL

from media_server import dtls_compat, openssl_dtls
from media_server.openssl_dtls import DtlsConnection, DtlsContext

SRTP = b"SRTP_AES128_CM_SHA1_80"
CIPHERS = b"ECDHE-ECDSA-AES128-GCM-SHA256"


def p224_certificate() -> RTCCertificate:
    """A self-signed certificate on NIST P-224, like the one FFmpeg's GnuTLS muxer makes."""
    key = ec.generate_private_key(ec.SECP224R1())
    return RTCCertificate(key=key, cert=aiortc_dtls.generate_certificate(key))


def context(kind: Any, certificate: RTCCertificate, ciphers: bytes = CIPHERS) -> Any:
    ctx = kind(SSL.DTLS_METHOD)
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *args: True)
    ctx.use_certificate(certificate._cert)
    ctx.use_privatekey(certificate._key)
    ctx.set_cipher_list(ciphers)
    ctx.set_tlsext_use_srtp(SRTP)
    return ctx


def handshake(client: Any, server: Any) -> None:
    """Drive both ends over memory BIOs until both finish; raises the first SSL.Error."""
    client.set_connect_state()
    server.set_accept_state()
    done = {id(client): False, id(server): False}
    for _ in range(20):
        for me, peer in ((client, server), (server, client)):
            if not done[id(me)]:
                try:
                    me.do_handshake()
                    done[id(me)] = True
                except SSL.WantReadError:
                    pass
            while True:
                try:
                    peer.bio_write(me.bio_read(65536))
                except SSL.WantReadError:
                    break
        if all(done.values()):
            return
    raise AssertionError("handshake did not finish")


def test_aiortcs_own_openssl_cannot_handshake_with_a_p224_peer() -> None:
    """The root condition, in memory: pyOpenSSL's OpenSSL has no P-224 group.

    Against a strict OpenSSL server the server gives up ("no shared cipher": its P-224
    certificate is outside the client's groups); against FFmpeg's lenient GnuTLS server the
    client does ("wrong curve", see docs/whip-interop.md). As a server it refuses a P-224
    client certificate.
    """
    client = SSL.Connection(context(SSL.Context, RTCCertificate.generateCertificate()))
    server = DtlsConnection(context(DtlsContext, p224_certificate()))
    with pytest.raises(SSL.Error, match="no shared cipher"):
        handshake(client, server)
    client = DtlsConnection(context(DtlsContext, p224_certificate()))
    server = SSL.Connection(context(SSL.Context, RTCCertificate.generateCertificate()))
    with pytest.raises(SSL.Error):
        handshake(client, server)


def test_system_openssl_client_accepts_a_p224_server_and_agrees_on_srtp_keys() -> None:
    ours, theirs = RTCCertificate.generateCertificate(), p224_certificate()
    client = DtlsConnection(context(DtlsContext, ours))
    server = DtlsConnection(context(DtlsContext, theirs))
    handshake(client, server)
    assert client.get_selected_srtp_profile() == server.get_selected_srtp_profile() == SRTP
    assert client.get_peer_certificate(as_cryptography=True) == theirs._cert
    assert server.get_peer_certificate(as_cryptography=True) == ours._cert
    label = b"EXTRACTOR-dtls_srtp"
    assert client.export_keying_material(label, 60) == server.export_keying_material(label, 60)
    client.send(b"ping")
    server.bio_write(client.bio_read(1500))
    assert server.recv(1500) == b"ping"


def test_system_openssl_interoperates_with_pyopenssl_both_ways() -> None:
    """Browsers' and aiortc's P-256 peers still work against the replacement, in both roles."""
    for client_kind, server_kind in ((DtlsContext, SSL.Context), (SSL.Context, DtlsContext)):
        connection = {DtlsContext: DtlsConnection, SSL.Context: SSL.Connection}
        client = connection[client_kind](context(client_kind, RTCCertificate.generateCertificate()))
        server = connection[server_kind](context(server_kind, RTCCertificate.generateCertificate()))
        handshake(client, server)
        assert client.get_selected_srtp_profile() == SRTP


def test_the_openssl_reason_of_a_failure_is_kept() -> None:
    """aiortc swallows the error of the read that failed; the connection keeps its reason."""
    client = DtlsConnection(context(DtlsContext, RTCCertificate.generateCertificate()))
    server = DtlsConnection(context(DtlsContext, RTCCertificate.generateCertificate(),
                                    ciphers=b"ECDHE-ECDSA-AES256-GCM-SHA384"))
    with pytest.raises(SSL.Error, match="no shared cipher"):
        handshake(client, server)
    assert server.last_error == "no shared cipher"


# --- guards: what dtls_compat relies on inside aiortc ------------------------------------------


def _ssl_methods_called(source: str, receiver: str) -> set[str]:
    return set(re.findall(rf"{re.escape(receiver)}\.(\w+)\(", source))


def test_aiortc_builds_its_dtls_from_the_module_global_ssl() -> None:
    assert "SSL" in vars(aiortc_dtls), "aiortc no longer imports OpenSSL.SSL into rtcdtlstransport"
    start = inspect.getsource(RTCDtlsTransport.start)
    assert "SSL.Connection(" in start and "_create_ssl_context(" in start
    assert "SSL.Context(" in inspect.getsource(RTCCertificate._create_ssl_context)


def test_the_replacement_has_every_method_aiortc_calls() -> None:
    context_calls = _ssl_methods_called(inspect.getsource(RTCCertificate._create_ssl_context), "ctx")
    assert context_calls, "aiortc's context setup changed shape"
    assert all(hasattr(DtlsContext, name) for name in context_calls), context_calls
    connection_calls = _ssl_methods_called(inspect.getsource(RTCDtlsTransport), "self._ssl")
    assert connection_calls, "aiortc's DTLS transport no longer keeps its connection in _ssl"
    assert all(hasattr(DtlsConnection, name) for name in connection_calls), connection_calls


def test_aiortc_context_under_system_dtls_is_the_replacement() -> None:
    certificate = RTCCertificate.generateCertificate()
    with dtls_compat.system_dtls() as on:
        assert on
        ctx = certificate._create_ssl_context(srtp_profiles=SRTP_PROFILES)
        assert isinstance(ctx, DtlsContext)
        assert isinstance(aiortc_dtls.SSL.Connection(ctx), DtlsConnection)
    ctx = certificate._create_ssl_context(srtp_profiles=SRTP_PROFILES)
    assert isinstance(ctx, SSL.Context)  # outside the block: pyOpenSSL, untouched
    assert openssl_dtls.openssl_version().startswith("OpenSSL 3.")
