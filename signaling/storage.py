"""The worker's durable state: Postgres (users, roles, sessions, memories, turn log),
Milvus memory vectors and the conversation window (Redis, or in-process on one node).

Opened in ``cleanup_ctx`` before anything that may need it and closed after every call
has hung up. Sessions are rows before they are tokens: ``POST /api/sessions`` creates the
user (when new) and the session in Postgres, then signs their ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

from aiohttp import web

from personas import Persona
from pipeline.memory import open_memory
from pipeline.window import open_window
from signaling import users_api
from signaling.auth import Claims
from signaling.keys import MEMORY, PERSONAS, RECORDINGS, SETTINGS, STORE, TOKENS, WINDOW
from signaling.recordings import Recordings
from signaling.retention import apply_retention
from storage import Store, open_sink

logger = logging.getLogger(__name__)

COMPACT_EVERY_S = 24 * 3600.0


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(_storage_ctx)
    users_api.setup_routes(
        app, store_key=STORE, memory_key=MEMORY, window_key=WINDOW, recordings_key=RECORDINGS,
        auth=lambda request: _required_claims(request),
        export_tokens=users_api.ExportTokens(
            issue=lambda request, claims: request.app[TOKENS].encode_export(claims.user_id, claims.session_id),
            verify=lambda request: request.app[TOKENS].export_from_request(request),
        ),
    )


def _required_claims(request: web.Request) -> Claims:
    claims = request.app[TOKENS].from_request(request, required=True)
    assert claims is not None
    return claims


async def _storage_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    store = await Store.open(settings)
    try:
        await store.upsert_roles([_role_record(p) for p in app[PERSONAS].values()])
        memory = await open_memory(settings, store)
    except BaseException:
        await store.close()
        raise
    app[STORE], app[MEMORY], app[WINDOW] = store, memory, open_window(settings, rows=store.windows)
    app[RECORDINGS] = Recordings(settings, store, open_sink(settings))
    compactor = asyncio.create_task(_compact_daily(app), name="memory compaction")
    yield
    compactor.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await compactor
    await app[RECORDINGS].close()  # the calls have hung up: their recordings are being stored
    await app[WINDOW].close()
    await memory.close()
    await store.close()


def _role_record(persona: Persona) -> dict[str, Any]:
    """A persona as a JSON-able ``roles`` record (its mappings are read-only views)."""
    return {
        f.name: dict(value) if isinstance(value, Mapping) else value
        for f in dataclasses.fields(persona)
        for value in (getattr(persona, f.name),)
    }


async def _compact_daily(app: web.Application) -> None:
    """Once a day (first pass a minute after start): fade and archive unused memories, then
    remove whatever is past its retention limit (signaling.retention)."""
    await asyncio.sleep(60)
    while True:
        try:
            await app[MEMORY].compact()
        except Exception:
            logger.exception("memory compaction failed; will retry tomorrow")
        try:
            await apply_retention(app[SETTINGS], app[STORE], app[MEMORY], app[WINDOW], app[RECORDINGS].sink)
        except Exception:
            logger.exception("retention pass failed; will retry tomorrow")
        await asyncio.sleep(COMPACT_EVERY_S)


async def new_session(app: web.Application, persona_id: str, user_id: str | None = None) -> Claims:
    """A stored session for ``user_id`` (a new anonymous user if unknown or None)."""
    store = app[STORE]
    if user_id is None or await store.get_user(user_id) is None:
        user_id = await store.create_user()
    session_id = await store.create_session(user_id, persona_id)
    return app[TOKENS].claims(session_id, user_id, persona_id)


async def resume_session(app: web.Application, claims: Claims, persona_id: str) -> Claims | None:
    """Fresh claims for the stored session ``claims`` names, or None when it is gone.

    The token proves the caller held the session; the row must still exist (a deleted user
    or a session removed by retention cannot be brought back) and belong to that user.
    """
    store = app[STORE]
    record = await store.get_session(claims.session_id)
    if record is None or record.user_id != claims.user_id:
        return None
    await store.touch_session(claims.session_id)
    return app[TOKENS].claims(claims.session_id, claims.user_id, persona_id)
