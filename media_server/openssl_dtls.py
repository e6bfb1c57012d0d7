"""A DTLS endpoint on the system's OpenSSL 3 (``libssl.so.3``) through ctypes.

Why this exists: aiortc does DTLS with pyOpenSSL, whose OpenSSL is the one bundled in the
``cryptography`` wheel (4.0 here). That build has no ``secp224r1`` TLS group, and an
OpenSSL (D)TLS 1.2 client refuses a server whose ECDSA certificate is on a curve outside
its own group list (``SSL_R_WRONG_CURVE``, fatal alert ``illegal_parameter``). FFmpeg's
``whip`` muxer built on GnuTLS — the one inside the PyAV wheels — signs with a P-224
certificate, so every such publisher failed right after ICE. The system OpenSSL 3.0 still
has P-224 and takes it when asked (see ``docs/whip-interop.md``).

:class:`DtlsContext` and :class:`DtlsConnection` copy the small part of pyOpenSSL's
``SSL.Context``/``SSL.Connection`` interface that aiortc's ``RTCDtlsTransport`` calls, and
raise pyOpenSSL's own exception classes, so the transport drives them unchanged
(``media_server.dtls_compat`` does the plugging in). Both are synchronous and I/O-free:
datagrams go in with :meth:`DtlsConnection.bio_write` and come out of
:meth:`DtlsConnection.bio_read` (memory BIOs), exactly as in aiortc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

logger = logging.getLogger(__name__)

#: Groups offered as a DTLS client (and accepted as a server). P-224 last: only for peers
#: whose certificate is on it; key exchange still prefers X25519/P-256.
GROUPS = b"X25519:P-256:P-384:P-521:P-224"

# OpenSSL 3.0 constants (ssl.h, tls1.h, dtls1.h, evp.h)
_SSL_CTRL_SET_GROUPS_LIST = 92
_DTLS_CTRL_GET_TIMEOUT = 73
_DTLS_CTRL_HANDLE_TIMEOUT = 74
_SSL_ERROR_SSL, _SSL_ERROR_WANT_READ, _SSL_ERROR_WANT_WRITE = 1, 2, 3
_SSL_ERROR_SYSCALL, _SSL_ERROR_ZERO_RETURN = 5, 6
_EVP_PKEY_EC = 408
_VERIFY_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)


class OpenSSLUnavailable(RuntimeError):
    """No usable system ``libssl.so.3`` (OpenSSL 3) with DTLS and P-224."""


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _SrtpProfile(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("id", ctypes.c_ulong)]


def _fn(lib: ctypes.CDLL, name: str, restype: Any, *argtypes: Any) -> Any:
    func = getattr(lib, name)
    func.restype = restype
    func.argtypes = list(argtypes)
    return func


class _Lib:
    """The libssl/libcrypto functions used here, with their C signatures."""

    def __init__(self, ssl: ctypes.CDLL, crypto: ctypes.CDLL) -> None:
        p, i, lng, ul, b = ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_ulong, ctypes.c_char_p
        self.version = _fn(crypto, "OpenSSL_version", b, i)
        self.DTLS_method = _fn(ssl, "DTLS_method", p)
        self.SSL_CTX_new = _fn(ssl, "SSL_CTX_new", p, p)
        self.SSL_CTX_free = _fn(ssl, "SSL_CTX_free", None, p)
        self.SSL_CTX_set_options = _fn(ssl, "SSL_CTX_set_options", ctypes.c_uint64, p, ctypes.c_uint64)
        self.SSL_CTX_ctrl = _fn(ssl, "SSL_CTX_ctrl", lng, p, i, lng, p)
        self.SSL_CTX_set_verify = _fn(ssl, "SSL_CTX_set_verify", None, p, i, _VERIFY_CB)
        self.SSL_CTX_use_certificate_ASN1 = _fn(ssl, "SSL_CTX_use_certificate_ASN1", i, p, i, b)
        self.SSL_CTX_use_PrivateKey_ASN1 = _fn(ssl, "SSL_CTX_use_PrivateKey_ASN1", i, i, p, b, lng)
        self.SSL_CTX_set_cipher_list = _fn(ssl, "SSL_CTX_set_cipher_list", i, p, b)
        self.SSL_CTX_set_tlsext_use_srtp = _fn(ssl, "SSL_CTX_set_tlsext_use_srtp", i, p, b)
        self.SSL_new = _fn(ssl, "SSL_new", p, p)
        self.SSL_free = _fn(ssl, "SSL_free", None, p)
        self.SSL_set_bio = _fn(ssl, "SSL_set_bio", None, p, p, p)
        self.SSL_set_connect_state = _fn(ssl, "SSL_set_connect_state", None, p)
        self.SSL_set_accept_state = _fn(ssl, "SSL_set_accept_state", None, p)
        self.SSL_do_handshake = _fn(ssl, "SSL_do_handshake", i, p)
        self.SSL_get_error = _fn(ssl, "SSL_get_error", i, p, i)
        self.SSL_read = _fn(ssl, "SSL_read", i, p, p, i)
        self.SSL_write = _fn(ssl, "SSL_write", i, p, b, i)
        self.SSL_shutdown = _fn(ssl, "SSL_shutdown", i, p)
        self.SSL_ctrl = _fn(ssl, "SSL_ctrl", lng, p, i, lng, p)
        self.SSL_get1_peer_certificate = _fn(ssl, "SSL_get1_peer_certificate", p, p)
        self.SSL_get_selected_srtp_profile = _fn(ssl, "SSL_get_selected_srtp_profile", ctypes.POINTER(_SrtpProfile), p)
        self.SSL_export_keying_material = _fn(ssl, "SSL_export_keying_material", i, p, p, ctypes.c_size_t, b,
                                              ctypes.c_size_t, b, ctypes.c_size_t, i)
        self.BIO_s_mem = _fn(crypto, "BIO_s_mem", p)
        self.BIO_new = _fn(crypto, "BIO_new", p, p)
        self.BIO_write = _fn(crypto, "BIO_write", i, p, b, i)
        self.BIO_read = _fn(crypto, "BIO_read", i, p, p, i)
        self.i2d_X509 = _fn(crypto, "i2d_X509", i, p, ctypes.POINTER(ctypes.c_void_p))
        self.X509_free = _fn(crypto, "X509_free", None, p)
        self.ERR_get_error = _fn(crypto, "ERR_get_error", ul)
        self.ERR_error_string_n = _fn(crypto, "ERR_error_string_n", None, ul, p, ctypes.c_size_t)
        self.ERR_clear_error = _fn(crypto, "ERR_clear_error", None)


@functools.cache
def load() -> _Lib:
    """The system OpenSSL 3, checked to offer P-224 as a DTLS group; raises OpenSSLUnavailable."""
    try:
        lib = _Lib(ctypes.CDLL("libssl.so.3"), ctypes.CDLL("libcrypto.so.3"))
    except (OSError, AttributeError) as exc:
        raise OpenSSLUnavailable(f"no system OpenSSL 3 (libssl.so.3): {exc}") from exc
    ctx = lib.SSL_CTX_new(lib.DTLS_method())
    try:
        if not ctx or lib.SSL_CTX_ctrl(ctx, _SSL_CTRL_SET_GROUPS_LIST, 0, GROUPS) != 1:
            raise OpenSSLUnavailable(f"{lib.version(0).decode()} cannot offer the DTLS groups {GROUPS.decode()}")
    finally:
        lib.ERR_clear_error()
        if ctx:
            lib.SSL_CTX_free(ctx)
    return lib


def openssl_version() -> str:
    return str(load().version(0).decode())


def _errors(lib: _Lib) -> list[str]:
    """Drain OpenSSL's error queue into readable reasons (e.g. ``wrong curve``)."""
    reasons = []
    buf = ctypes.create_string_buffer(256)
    while code := lib.ERR_get_error():
        lib.ERR_error_string_n(code, buf, len(buf))
        reasons.append(buf.value.decode(errors="replace").rsplit(":", 1)[-1])
    return reasons


class DtlsContext:
    """Settings for new connections: the subset of ``OpenSSL.SSL.Context`` aiortc uses."""

    def __init__(self, method: int = SSL.DTLS_METHOD) -> None:
        if method != SSL.DTLS_METHOD:
            raise ValueError("only DTLS_METHOD is supported")
        self._lib = load()
        ctx = self._lib.SSL_CTX_new(self._lib.DTLS_method())
        if not ctx:
            raise SSL.Error(_errors(self._lib))
        self._ctx: int = ctx
        self._verify: Any = None  # the ctypes callback must outlive the context
        self._check(self._lib.SSL_CTX_ctrl(ctx, _SSL_CTRL_SET_GROUPS_LIST, 0, GROUPS) == 1)

    def _check(self, ok: bool) -> None:
        if not ok:
            raise SSL.Error(_errors(self._lib))

    def set_options(self, options: int) -> int:
        return int(self._lib.SSL_CTX_set_options(self._ctx, options))

    def set_verify(self, mode: int, callback: Any = None) -> None:
        """Peer certificates are accepted here; aiortc checks the SDP fingerprint afterwards."""
        self._verify = _VERIFY_CB(lambda preverify_ok, store: 1)
        self._lib.SSL_CTX_set_verify(self._ctx, mode, self._verify)

    def use_certificate(self, cert: x509.Certificate) -> None:
        der = cert.public_bytes(serialization.Encoding.DER)
        self._check(self._lib.SSL_CTX_use_certificate_ASN1(self._ctx, len(der), der) == 1)

    def use_privatekey(self, key: Any) -> None:
        der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
        self._check(self._lib.SSL_CTX_use_PrivateKey_ASN1(_EVP_PKEY_EC, self._ctx, der, len(der)) == 1)

    def set_cipher_list(self, ciphers: bytes) -> None:
        self._check(self._lib.SSL_CTX_set_cipher_list(self._ctx, ciphers) == 1)

    def set_tlsext_use_srtp(self, profiles: bytes) -> None:
        self._check(self._lib.SSL_CTX_set_tlsext_use_srtp(self._ctx, profiles) == 0)  # 0 is success

    def __del__(self) -> None:
        if getattr(self, "_ctx", None):
            self._lib.SSL_CTX_free(self._ctx)
            self._ctx = 0


class DtlsConnection:
    """One DTLS association over memory BIOs: the subset of ``OpenSSL.SSL.Connection`` aiortc uses.

    ``last_error`` keeps OpenSSL's reason for the latest failure: aiortc swallows the error
    raised while reading a handshake record and then sees an empty error queue.
    """

    def __init__(self, context: DtlsContext) -> None:
        lib = self._lib = context._lib
        self._context = context  # keeps the SSL_CTX (and its verify callback) alive
        self._ssl: int = lib.SSL_new(context._ctx)
        if not self._ssl:
            raise SSL.Error(_errors(lib))
        self._rbio, self._wbio = lib.BIO_new(lib.BIO_s_mem()), lib.BIO_new(lib.BIO_s_mem())
        lib.SSL_set_bio(self._ssl, self._rbio, self._wbio)  # the SSL object owns both BIOs now
        self.last_error: str | None = None

    def set_connect_state(self) -> None:
        self._lib.SSL_set_connect_state(self._ssl)

    def set_accept_state(self) -> None:
        self._lib.SSL_set_accept_state(self._ssl)

    def _raise(self, ret: int) -> None:
        """Turn a failed SSL_* return into pyOpenSSL's exception, remembering the reason."""
        code = self._lib.SSL_get_error(self._ssl, ret)
        if code == _SSL_ERROR_WANT_READ:
            raise SSL.WantReadError()
        if code == _SSL_ERROR_WANT_WRITE:
            raise SSL.WantWriteError()
        if code == _SSL_ERROR_ZERO_RETURN:
            raise SSL.ZeroReturnError()
        reasons = _errors(self._lib)
        if reasons:
            self.last_error = ", ".join(reasons)
        elif self.last_error is None:  # an empty queue says nothing; keep any earlier reason
            self.last_error = f"SSL error {code}"
        raise SSL.Error(reasons or [self.last_error])

    def do_handshake(self) -> None:
        ret = self._lib.SSL_do_handshake(self._ssl)
        if ret != 1:
            self._raise(ret)

    def bio_write(self, data: bytes) -> int:
        return int(self._lib.BIO_write(self._rbio, data, len(data)))

    def bio_read(self, bufsiz: int) -> bytes:
        buf = ctypes.create_string_buffer(bufsiz)
        n = self._lib.BIO_read(self._wbio, buf, bufsiz)
        if n <= 0:
            raise SSL.WantReadError()
        return buf.raw[:n]

    def recv(self, bufsiz: int) -> bytes:
        buf = ctypes.create_string_buffer(bufsiz)
        n = self._lib.SSL_read(self._ssl, buf, bufsiz)
        if n <= 0:
            self._raise(n)
        return buf.raw[:n]

    def send(self, data: bytes) -> int:
        n = self._lib.SSL_write(self._ssl, data, len(data))
        if n <= 0:
            self._raise(n)
        return int(n)

    def shutdown(self) -> bool:
        return bool(self._lib.SSL_shutdown(self._ssl) == 1)

    def DTLSv1_get_timeout(self) -> float | None:  # noqa: N802 (pyOpenSSL's name)
        tv = _Timeval()
        if self._lib.SSL_ctrl(self._ssl, _DTLS_CTRL_GET_TIMEOUT, 0, ctypes.byref(tv)) != 1:
            return None
        return float(tv.tv_sec + tv.tv_usec / 1e6)

    def DTLSv1_handle_timeout(self) -> bool:  # noqa: N802 (pyOpenSSL's name)
        return bool(self._lib.SSL_ctrl(self._ssl, _DTLS_CTRL_HANDLE_TIMEOUT, 0, None) > 0)

    def get_peer_certificate(self, *, as_cryptography: bool = True) -> x509.Certificate | None:
        cert = self._lib.SSL_get1_peer_certificate(self._ssl)
        if not cert:
            return None
        try:
            size = self._lib.i2d_X509(cert, None)
            buf = ctypes.create_string_buffer(size)
            ptr = ctypes.c_void_p(ctypes.addressof(buf))
            self._lib.i2d_X509(cert, ctypes.byref(ptr))
            return x509.load_der_x509_certificate(buf.raw[:size])
        finally:
            self._lib.X509_free(cert)

    def get_selected_srtp_profile(self) -> bytes:
        profile = self._lib.SSL_get_selected_srtp_profile(self._ssl)
        return bytes(profile.contents.name) if profile else b""

    def export_keying_material(self, label: bytes, olen: int, context: bytes | None = None) -> bytes:
        out = ctypes.create_string_buffer(olen)
        ok = self._lib.SSL_export_keying_material(self._ssl, out, olen, label, len(label), context,
                                                  len(context or b""), int(context is not None))
        if ok != 1:
            raise SSL.Error(_errors(self._lib))
        return out.raw[:olen]

    def __del__(self) -> None:
        if getattr(self, "_ssl", None):
            self._lib.SSL_free(self._ssl)
            self._ssl = 0
