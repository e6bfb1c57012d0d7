"""Session tokens: short-lived HS256 JWTs naming the session, user and persona; and export tokens.

An export token (audience ``parley:export``, ``PARLEY_EXPORT_TOKEN_TTL`` seconds, 60 by
default) is a fresh proof that the session token's holder is at the keyboard now: a session
token lives an hour and may have leaked, so the sensitive reads — a user's export, their
recordings — take only an export token, obtained with the session token just before. The
audiences keep the two apart both ways: a session token is refused where an export token is
required, and an export token (it has an audience) fails as a session token.

The signing secret is ``PARLEY_SECRET`` or, when unset, one generated on first run into
``DATA_DIR/secret.key`` with mode 0600 — so tokens survive restarts and every worker
process of a node agrees on it without configuration.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
from aiohttp import web

from parley.config import Settings
from signaling.errors import ApiError

ALGORITHM = "HS256"
EXPORT_AUDIENCE = "parley:export"
_GET_EXPORT_TOKEN = "get one with POST /api/users/{id}/export-token and the session token"


@dataclass(frozen=True, slots=True)
class Claims:
    session_id: str
    user_id: str
    persona: str
    expires_at: int


def load_secret(settings: Settings) -> str:
    """The configured secret, else the one in DATA_DIR/secret.key (created 0600 if missing)."""
    if settings.secret:
        return settings.secret
    path = settings.data_path / "secret.key"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_secret(path)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(48))
    return _read_secret(path)


def _read_secret(path: Path) -> str:
    secret = path.read_text().strip()
    if len(secret) < 32:
        raise RuntimeError(f"{path} holds a secret shorter than 32 characters; delete it to regenerate")
    return secret


class TokenIssuer:
    def __init__(self, secret: str, ttl_s: int, export_ttl_s: int = 60) -> None:
        self._secret = secret
        self._ttl_s = ttl_s
        self.export_ttl_s = export_ttl_s

    def claims(self, session_id: str, user_id: str, persona: str) -> Claims:
        """Claims for a stored session, expiring ``ttl_s`` from now."""
        return Claims(session_id, user_id, persona, int(time.time()) + self._ttl_s)

    def encode(self, claims: Claims) -> str:
        payload = {"sid": claims.session_id, "sub": claims.user_id, "persona": claims.persona,
                   "exp": claims.expires_at}
        return jwt.encode(payload, self._secret, algorithm=ALGORITHM)

    def decode(self, token: str) -> Claims:
        try:
            p = jwt.decode(token, self._secret, algorithms=[ALGORITHM],
                           options={"require": ["exp", "sub", "sid"]})
        except jwt.ExpiredSignatureError as exc:
            raise ApiError(401, "token_expired", "the session token has expired") from exc
        except jwt.PyJWTError as exc:
            raise ApiError(401, "bad_token", "the session token is invalid") from exc
        return Claims(str(p["sid"]), str(p["sub"]), str(p.get("persona", "")), int(p["exp"]))

    def encode_export(self, user_id: str, session_id: str) -> tuple[str, int]:
        """An export token for the session's user and its expiry (unix seconds)."""
        now = int(time.time())
        expires_at = now + self.export_ttl_s
        payload = {"sid": session_id, "sub": user_id, "aud": EXPORT_AUDIENCE,
                   "iat": now, "exp": expires_at}
        return jwt.encode(payload, self._secret, algorithm=ALGORITHM), expires_at

    def decode_export(self, token: str) -> Claims:
        """Claims of an export token; 401 ``export_token_required`` for any other valid token."""
        try:
            p = jwt.decode(token, self._secret, algorithms=[ALGORITHM], audience=EXPORT_AUDIENCE,
                           options={"require": ["exp", "sub", "sid", "aud"]})
        except jwt.ExpiredSignatureError as exc:
            raise ApiError(401, "export_token_expired", f"the export token has expired; {_GET_EXPORT_TOKEN}") from exc
        except (jwt.MissingRequiredClaimError, jwt.InvalidAudienceError) as exc:
            raise ApiError(401, "export_token_required",
                           f"this needs an export token, not a session token; {_GET_EXPORT_TOKEN}") from exc
        except jwt.PyJWTError as exc:
            raise ApiError(401, "bad_token", "the export token is invalid") from exc
        return Claims(str(p["sid"]), str(p["sub"]), "", int(p["exp"]))

    def from_request(self, request: web.Request, *, required: bool) -> Claims | None:
        """Session claims from ``Authorization: Bearer`` or, on a WebSocket handshake, the
        subprotocol ``parley.token.<JWT>``; 401 if bad (or missing and required)."""
        token = bearer_token(request)
        if not token:
            if required:
                raise ApiError(401, "unauthorized", "a session token is required")
            return None
        return self.decode(token)

    def export_from_request(self, request: web.Request) -> Claims:
        """Export-token claims from ``Authorization: Bearer``; 401 when missing or not one."""
        token = bearer_token(request)
        if not token:
            raise ApiError(401, "export_token_required", f"an export token is required; {_GET_EXPORT_TOKEN}")
        return self.decode_export(token)


def bearer_token(request: web.Request) -> str:
    """The raw token of ``Authorization: Bearer`` or the WebSocket subprotocol ("" if none).

    Tokens never travel in URLs (they end up in access logs, proxies and browser
    history): ``?token=`` is refused with a message saying what to do instead.
    """
    if "token" in request.query:
        raise ApiError(401, "token_in_url", "send the token as Authorization: Bearer or, on /ws, "
                                            "as the WebSocket subprotocol parley.token.<token>")
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise ApiError(401, "bad_token", "use Authorization: Bearer <token>")
        return value.strip()
    return subprotocol_token(request)


WS_PROTOCOL = "parley.v1"
WS_TOKEN_PREFIX = "parley.token."


def subprotocol_token(request: web.Request) -> str:
    """The token offered as ``Sec-WebSocket-Protocol: parley.v1, parley.token.<JWT>`` (or "")."""
    offered = request.headers.get("Sec-WebSocket-Protocol", "")
    for item in offered.split(","):
        item = item.strip()
        if item.startswith(WS_TOKEN_PREFIX):
            return item[len(WS_TOKEN_PREFIX):]
    return ""
