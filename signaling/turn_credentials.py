"""Time-limited TURN credentials (the TURN REST API scheme coturn's ``use-auth-secret`` checks).

The media server and the TURN server share one secret and never talk to each other: a
credential is ``username = "<expiry unix time>:<user id>"`` and
``credential = base64(HMAC-SHA1(secret, username))``. The TURN server recomputes the HMAC
and refuses usernames whose expiry has passed, so a leaked credential dies on its own and
the secret itself never leaves the server (only per-session HMACs of it do).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from dataclasses import dataclass

# the user id goes into the username after the colon: keep it to characters no TURN client mangles
_UNSAFE = re.compile(r"[^A-Za-z0-9_.@-]")


@dataclass(frozen=True, slots=True)
class TurnCredential:
    """One RTCIceServer entry's login for ``urls``."""

    username: str
    credential: str
    expires_at: int


def sign(secret: str, username: str) -> str:
    """base64(HMAC-SHA1(secret, username)), as coturn computes it."""
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def issue(secret: str, user_id: str, ttl_s: int, now: float | None = None) -> TurnCredential:
    """A credential for ``user_id`` valid for ``ttl_s`` seconds from ``now``."""
    if not secret:
        raise ValueError("a TURN credential needs PARLEY_TURN_SECRET")
    expires_at = int(now if now is not None else time.time()) + max(1, ttl_s)
    username = f"{expires_at}:{_UNSAFE.sub('_', user_id)[:64] or 'anonymous'}"
    return TurnCredential(username, sign(secret, username), expires_at)


def verify(secret: str, username: str, credential: str, now: float | None = None) -> bool:
    """What the TURN server does: the HMAC matches and the expiry in the username is ahead."""
    expiry, sep, _user = username.partition(":")
    if not sep or not expiry.isdigit():
        return False
    if int(expiry) <= int(now if now is not None else time.time()):
        return False
    return hmac.compare_digest(sign(secret, username), credential)


def ice_servers(stun_urls: list[str], turn_urls: list[str], secret: str, user_id: str,
                ttl_s: int) -> list[dict[str, object]]:
    """The ``ice_servers`` list of a session: plain STUN/TURN URLs, then the TURN URLs with a login."""
    servers: list[dict[str, object]] = [{"urls": url} for url in stun_urls]
    if turn_urls:
        cred = issue(secret, user_id, ttl_s)
        servers.append({"urls": list(turn_urls), "username": cred.username,
                        "credential": cred.credential, "credentialType": "password"})
    return servers
