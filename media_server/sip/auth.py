"""SIP digest authentication (RFC 3261 section 22, RFC 2617 with qop=auth, MD5).

Nonces are stateless: ``<unix time>.<HMAC of it>`` under a per-process key, so a challenge
needs no table (a flood of INVITEs cannot grow memory) and a nonce expires by age.
MD5 is what every SIP phone speaks; with it, the allow-list of source networks and TLS at
the PBX are the real protection — this is a door lock, not a vault.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from media_server.sip.message import params

REALM = "parley"
NONCE_TTL_S = 300


def parse_users(spec: str) -> dict[str, str]:
    """``user:password,user2:password2`` -> {user: password}."""
    users = {}
    for item in spec.split(","):
        user, sep, password = item.strip().partition(":")
        if item.strip() and (not sep or not user):
            raise ValueError("PARLEY_SIP_USERS must be user:password pairs separated by commas")
        if user:
            users[user] = password
    return users


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


class DigestAuth:
    def __init__(self, users: dict[str, str], realm: str = REALM) -> None:
        self.users = users
        self.realm = realm
        self._key = secrets.token_bytes(32)

    def _sign(self, stamp: str) -> str:
        return hmac.new(self._key, stamp.encode(), hashlib.sha256).hexdigest()[:32]

    def challenge(self, now: float | None = None) -> str:
        """A ``WWW-Authenticate`` value with a fresh nonce."""
        stamp = str(int(time.time() if now is None else now))
        nonce = f"{stamp}.{self._sign(stamp)}"
        return f'Digest realm="{self.realm}", nonce="{nonce}", algorithm=MD5, qop="auth"'

    def verify(self, header: str | None, method: str, now: float | None = None) -> str | None:
        """The authenticated user name, or None (missing, stale or wrong credentials)."""
        if not header or not header[:7].lower() == "digest ":
            return None
        fields = params(";" + header[7:].replace(",", ";"))
        user, nonce, uri, response = (fields.get(k, "") for k in ("username", "nonce", "uri", "response"))
        if user not in self.users or not self._fresh(nonce, now):
            return None
        ha1 = _md5(f"{user}:{self.realm}:{self.users[user]}")
        ha2 = _md5(f"{method}:{uri}")
        if fields.get("qop") == "auth":
            expected = _md5(f"{ha1}:{nonce}:{fields.get('nc', '')}:{fields.get('cnonce', '')}:auth:{ha2}")
        else:
            expected = _md5(f"{ha1}:{nonce}:{ha2}")
        return user if hmac.compare_digest(expected, response.lower()) else None

    def _fresh(self, nonce: str, now: float | None) -> bool:
        stamp, _, signature = nonce.partition(".")
        if not stamp.isdigit() or not hmac.compare_digest(self._sign(stamp), signature):
            return False
        age = (time.time() if now is None else now) - int(stamp)
        return 0 <= age <= NONCE_TTL_S
