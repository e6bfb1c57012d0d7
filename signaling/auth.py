"""Session tokens: short-lived HS256 JWTs naming the session, user and persona.

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
    def __init__(self, secret: str, ttl_s: int) -> None:
        self._secret = secret
        self._ttl_s = ttl_s

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

    def from_request(self, request: web.Request, *, required: bool) -> Claims | None:
        """Claims from ``Authorization: Bearer`` or ``?token=``; 401 if bad (or missing and required)."""
        header = request.headers.get("Authorization", "")
        token = request.query.get("token", "")
        if header:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise ApiError(401, "bad_token", "use Authorization: Bearer <token>")
            token = value.strip()
        if not token:
            if required:
                raise ApiError(401, "unauthorized", "a session token is required")
            return None
        return self.decode(token)
