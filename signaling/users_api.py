"""HTTP routes for a user's own data: save a memory, export everything, delete everything.

- ``POST /api/sessions/{id}/memories`` ``{"text"}`` → 201 ``{"id"}``: an explicit memory for the
  session's user and persona (merged into a near-duplicate if there is one).
- ``POST /api/users/{id}/export-token`` → 201 ``{"token","expires_at","expires_in"}``: a
  short-lived export token, for the session token's holder only.
- ``GET /api/users/{id}/export`` (export token) → 200: every row Postgres holds about the user
  (profile, sessions, memories with their text, turns, recordings with a download path) plus
  the live conversation windows.
- ``GET /api/users/{id}/recordings/{rid}`` (export token) → 200 ``audio/wav``: one recording.
- ``DELETE /api/users/{id}`` → 204: recordings' audio, vectors, rows and every cache key, everywhere.
- ``DELETE /api/users/{id}/memories/{mid}`` → 204: one memory, its vector and its row.

A caller may only touch their own data. A session or user that is not the caller's answers
403 whether or not it exists, so ids cannot be probed. Authentication is the lead's: the app
passes an ``auth`` callable that returns the caller's claims or raises its 401 ApiError, and
``export_tokens`` that issue and check the export tokens (``signaling.auth``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from pipeline.memory import MAX_MEMORY_CHARS, MemoryService
from pipeline.window import ConversationWindow
from signaling.errors import ApiError, read_json
from signaling.recordings import Recordings
from storage import Store, canonical_id

logger = logging.getLogger(__name__)


class Claims(Protocol):
    """What the routes need to know about the caller."""

    @property
    def user_id(self) -> str: ...

    @property
    def session_id(self) -> str: ...


class Authenticate(Protocol):
    """Claims of the request's caller; raises ApiError(401, …) when there are none."""

    def __call__(self, request: web.Request) -> Claims: ...


@dataclass(frozen=True, slots=True)
class ExportTokens:
    """Issue an export token for session claims (token, expiry in unix seconds); verify one."""

    issue: Callable[[web.Request, Claims], tuple[str, int]]
    verify: Authenticate


def _same_id(a: str, b: str) -> bool:
    """Ids compare by value: tokens may spell a UUID in hex or in its dashed form."""
    try:
        return canonical_id(a) == canonical_id(b)
    except ValueError:
        return False


def _forbidden(what: str) -> ApiError:
    return ApiError(403, "forbidden", f"that {what} is not yours")


class _UsersApi:
    """The handlers, bound to the app keys of the shared services they use."""

    def __init__(
        self,
        store_key: web.AppKey[Store],
        memory_key: web.AppKey[MemoryService],
        window_key: web.AppKey[ConversationWindow],
        recordings_key: web.AppKey[Recordings],
        auth: Authenticate,
        export_tokens: ExportTokens,
    ) -> None:
        self._store_key = store_key
        self._memory_key = memory_key
        self._window_key = window_key
        self._recordings_key = recordings_key
        self._auth = auth
        self._export = export_tokens

    def _own_user(self, request: web.Request, auth: Authenticate | None = None) -> str:
        """The path's user id, canonical, if it is the caller's; 403 otherwise."""
        return self._caller(request, auth)[0]

    def _caller(self, request: web.Request, auth: Authenticate | None = None) -> tuple[str, Claims]:
        """The path's user id (canonical) and the caller's claims; 403 if the user is not the caller."""
        claims = (auth or self._auth)(request)
        user_id = request.match_info["id"]
        if not _same_id(user_id, claims.user_id):
            raise _forbidden("user")
        return canonical_id(user_id), claims

    async def save_memory(self, request: web.Request) -> web.Response:
        claims = self._auth(request)
        store = request.app[self._store_key]
        session = await store.get_session(request.match_info["id"])
        if session is None or not _same_id(session.user_id, claims.user_id):
            raise _forbidden("session")
        body = await read_json(request)
        text = body.get("text")
        if not isinstance(text, str):
            raise ApiError(400, "bad_text", "'text' must be a string")
        if len(text) > MAX_MEMORY_CHARS:
            raise ApiError(400, "text_too_long", f"a memory is at most {MAX_MEMORY_CHARS} characters")
        memory = request.app[self._memory_key]
        memory_id = await memory.remember(session.user_id, session.role_id, text, "explicit")
        if memory_id is None:
            raise ApiError(400, "empty_text", "'text' is empty")
        return web.json_response({"id": memory_id}, status=201)

    async def export_token(self, request: web.Request) -> web.Response:
        """A fresh export token: the session token's holder proves it is them, now."""
        user_id, claims = self._caller(request)
        if await request.app[self._store_key].get_user(user_id) is None:
            raise ApiError(404, "user_not_found", "no such user")
        token, expires_at = self._export.issue(request, claims)
        logger.info("user %s got an export token", user_id)
        return web.json_response({"token": token, "expires_at": expires_at,
                                  "expires_in": max(0, expires_at - int(time.time()))}, status=201)

    async def export_user(self, request: web.Request) -> web.Response:
        user_id = self._own_user(request, self._export.verify)
        data = await request.app[self._store_key].export_user(user_id)
        if data is None:
            raise ApiError(404, "user_not_found", "no such user")
        recordings = request.app[self._recordings_key]
        data["recordings"] = [recordings.export_entry(row) for row in data["recordings"]]
        window = request.app[self._window_key]
        windows = {}
        for session in data["sessions"]:
            messages = await window.load(session["id"])
            if messages:
                windows[session["id"]] = [{"role": m.role, "content": m.content} for m in messages]
        data["window"] = windows
        logger.info("user %s exported their data", user_id)
        return web.json_response(data)

    async def download_recording(self, request: web.Request) -> web.StreamResponse:
        """One recording's audio; 404 whether it never existed or belongs to someone else."""
        user_id = self._own_user(request, self._export.verify)
        row = await request.app[self._store_key].recordings.get(user_id, request.match_info["rid"])
        if row is None:
            raise ApiError(404, "recording_not_found", "no such recording")
        try:
            return await request.app[self._recordings_key].stream(request, row)
        except (FileNotFoundError, StopAsyncIteration) as exc:
            raise ApiError(404, "recording_not_found", "that recording's audio is gone") from exc

    async def delete_memory(self, request: web.Request) -> web.Response:
        """One memory, vector and row; 404 whether it never existed or belongs to someone else."""
        user_id = self._own_user(request)
        if not await request.app[self._memory_key].forget(user_id, request.match_info["mid"]):
            raise ApiError(404, "memory_not_found", "no such memory")
        logger.info("user %s deleted a memory", user_id)
        return web.Response(status=204)

    async def delete_user(self, request: web.Request) -> web.Response:
        user_id = self._own_user(request)
        store = request.app[self._store_key]
        if await store.get_user(user_id) is None:
            raise ApiError(404, "user_not_found", "no such user")
        sessions = await store.user_sessions(user_id)
        # Derived copies first, the rows last: if anything fails half-way, the user still
        # exists and a retry of the same request finishes the job.
        recordings = await request.app[self._recordings_key].forget_user(user_id)
        await request.app[self._memory_key].forget_user(user_id)
        keys = await request.app[self._window_key].purge([user_id, *sessions])
        await store.delete_user(user_id)
        logger.info("user %s deleted (%d sessions, %d recordings, %d cache keys)", user_id, len(sessions),
                    recordings, keys)
        return web.Response(status=204)


def setup_routes(
    app: web.Application,
    *,
    store_key: web.AppKey[Store],
    memory_key: web.AppKey[MemoryService],
    window_key: web.AppKey[ConversationWindow],
    recordings_key: web.AppKey[Recordings],
    auth: Authenticate,
    export_tokens: ExportTokens,
) -> None:
    """Register the memory/export/delete routes; the services are looked up per request."""
    api = _UsersApi(store_key, memory_key, window_key, recordings_key, auth, export_tokens)
    app.router.add_post("/api/sessions/{id}/memories", api.save_memory)
    app.router.add_post("/api/users/{id}/export-token", api.export_token)
    app.router.add_get("/api/users/{id}/export", api.export_user)
    app.router.add_get("/api/users/{id}/recordings/{rid}", api.download_recording)
    app.router.add_delete("/api/users/{id}", api.delete_user)
    app.router.add_delete("/api/users/{id}/memories/{mid}", api.delete_memory)
