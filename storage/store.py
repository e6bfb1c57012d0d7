"""``Store``: Parley's durable state in Postgres — users, roles, sessions, memories, turns.

One code path whatever the deployment: with ``PARLEY_DATABASE_URL`` it talks to that server,
without it it starts an embedded Postgres (pgserver) under ``DATA_DIR/pg``. Everything a user
owns hangs off ``users(id)`` with ``ON DELETE CASCADE``, so :meth:`Store.delete_user` erases a
user from Postgres in one statement and :meth:`Store.export_user` can gather it all in one
snapshot.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg

from parley.config import Settings
from storage.memories import MemoryRows
from storage.postgres import (
    EmbeddedPostgres,
    create_pool,
    describe_url,
    load_migrations,
    migrate,
)
from storage.recording_rows import RecordingRows
from storage.records import (
    Role,
    SessionRecord,
    User,
    jsonable,
    new_id,
    parse_uuid,
)
from storage.windows import WindowRows

logger = logging.getLogger(__name__)


def _role_values(record: Mapping[str, Any]) -> tuple[Any, ...]:
    """A persona record as a ``roles`` row; the whole record is kept in config_json."""
    role_id = record["id"]
    return (
        role_id,
        record.get("name") or role_id,
        record.get("system_prompt") or "",
        record.get("default_voice") or record.get("voice"),
        dict(record),
    )


class Store:
    """Async access to Postgres. Create with :meth:`open`; share one per process."""

    def __init__(self, pool: asyncpg.Pool, embedded: EmbeddedPostgres | None) -> None:
        self._pool = pool
        self._embedded = embedded
        self.memories = MemoryRows(pool)
        self.windows = WindowRows(pool)
        self.recordings = RecordingRows(pool)

    @classmethod
    async def open(cls, settings: Settings, *, pool_size: int = 10) -> Store:
        """Connect (starting the embedded server if no URL is set) and migrate the schema."""
        async with contextlib.AsyncExitStack() as undo:
            embedded = None
            url = settings.database_url
            if not url:
                embedded = await EmbeddedPostgres.start(settings.data_path / "pg")
                undo.push_async_callback(embedded.stop)
                url = embedded.url
            pool = await create_pool(url, max_size=pool_size)
            undo.push_async_callback(pool.close)
            async with pool.acquire() as conn:
                applied = await migrate(conn, load_migrations())
            undo.pop_all()
        logger.info(
            "store open on %s (%s); migrations applied now: %s",
            describe_url(url),
            "embedded" if embedded else "external",
            applied or "none",
        )
        return cls(pool, embedded)

    async def close(self) -> None:
        """Close the pool; let go of the embedded server (stopped if no other process uses it)."""
        await self._pool.close()
        if self._embedded is not None:
            await self._embedded.stop()

    @property
    def pool(self) -> asyncpg.Pool:
        """The connection pool, for callers with queries of their own (health checks, tests)."""
        return self._pool

    # -- roles -------------------------------------------------------------------------------

    async def upsert_roles(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Insert or update one role per persona record (keys: id, name, system_prompt, voice)."""
        await self._pool.executemany(
            """
            INSERT INTO roles (id, name, system_prompt, default_voice, config_json)
            VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (id) DO UPDATE
               SET name = EXCLUDED.name, system_prompt = EXCLUDED.system_prompt,
                   default_voice = EXCLUDED.default_voice, config_json = EXCLUDED.config_json,
                   updated_at = now()
            """,
            [_role_values(r) for r in records],
        )

    async def get_role(self, role_id: str) -> Role | None:
        row = await self._pool.fetchrow("SELECT * FROM roles WHERE id = $1", role_id)
        return Role.from_row(row) if row else None

    # -- users -------------------------------------------------------------------------------

    async def create_user(
        self,
        username: str | None = None,
        *,
        email: str | None = None,
        hashed_password: str | None = None,
    ) -> str:
        """A new user (anonymous when no username); returns its id."""
        user_id = new_id()
        await self._pool.execute(
            "INSERT INTO users (id, username, email, hashed_password) VALUES ($1, $2, $3, $4)",
            parse_uuid(user_id), username, email, hashed_password,
        )
        return user_id

    async def get_user(self, user_id: str) -> User | None:
        uid = parse_uuid(user_id)
        if uid is None:
            return None
        row = await self._pool.fetchrow("SELECT * FROM users WHERE id = $1", uid)
        return User.from_row(row) if row else None

    async def delete_user(self, user_id: str) -> bool:
        """Delete the user and, by cascade, their sessions, memories and turns."""
        uid = parse_uuid(user_id)
        if uid is None:
            return False
        status: str = await self._pool.execute("DELETE FROM users WHERE id = $1", uid)
        deleted = status == "DELETE 1"
        if deleted:
            logger.info("user %s deleted from postgres", user_id)
        return deleted

    # -- sessions ----------------------------------------------------------------------------

    async def create_session(
        self, user_id: str, role_id: str, state: Mapping[str, Any] | None = None
    ) -> str:
        """A new session of ``user_id`` with persona ``role_id``; returns its id."""
        session_id = new_id()
        await self._pool.execute(
            "INSERT INTO sessions (id, user_id, role_id, state_json) VALUES ($1, $2, $3, $4)",
            parse_uuid(session_id), parse_uuid(user_id), role_id, dict(state or {}),
        )
        return session_id

    async def get_session(self, session_id: str) -> SessionRecord | None:
        sid = parse_uuid(session_id)
        if sid is None:
            return None
        row = await self._pool.fetchrow("SELECT * FROM sessions WHERE id = $1", sid)
        return SessionRecord.from_row(row) if row else None

    async def touch_session(
        self, session_id: str, state: Mapping[str, Any] | None = None
    ) -> bool:
        """Mark the session active now, replacing its state when one is given."""
        status: str = await self._pool.execute(
            """
            UPDATE sessions SET last_active = now(), state_json = COALESCE($2, state_json)
             WHERE id = $1
            """,
            parse_uuid(session_id), None if state is None else dict(state),
        )
        return status == "UPDATE 1"

    async def user_sessions(self, user_id: str) -> list[str]:
        """Ids of every session of ``user_id``, oldest first."""
        rows = await self._pool.fetch(
            "SELECT id FROM sessions WHERE user_id = $1 ORDER BY created_at, id",
            parse_uuid(user_id),
        )
        return [row["id"].hex for row in rows]

    # -- turns -------------------------------------------------------------------------------

    async def log_turn(
        self,
        session_id: str,
        user_id: str,
        role_id: str,
        *,
        started_at: datetime | None = None,
        latency_ms: Mapping[str, float] | None = None,
        usage: Mapping[str, int] | None = None,
    ) -> None:
        """Record one agent turn: stage latencies (ms) and usage counters (tokens, seconds)."""
        await self._pool.execute(
            """
            INSERT INTO turns (session_id, user_id, role_id, started_at, latency_ms, usage)
            VALUES ($1, $2, $3, $4, $5, $6)
            """,
            parse_uuid(session_id),
            parse_uuid(user_id),
            role_id,
            started_at or datetime.now(UTC),
            dict(latency_ms or {}),
            dict(usage or {}),
        )

    # -- privacy -----------------------------------------------------------------------------

    async def export_user(self, user_id: str) -> dict[str, Any] | None:
        """Everything Postgres holds about the user, JSON-ready; None for an unknown user.

        Read in one repeatable-read snapshot so the parts agree with each other. The password
        hash is reported as present or not, never exported.
        """
        uid = parse_uuid(user_id)
        if uid is None:
            return None
        async with self._pool.acquire() as conn:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                user = await conn.fetchrow("SELECT * FROM users WHERE id = $1", uid)
                if user is None:
                    return None
                parts = {
                    name: [jsonable(r) for r in await conn.fetch(query, uid)]
                    for name, query in _EXPORT_QUERIES.items()
                }
        profile = jsonable(user)
        profile["has_password"] = profile.pop("hashed_password") is not None
        return {"user": profile, **parts}


_EXPORT_QUERIES = {
    "sessions": "SELECT * FROM sessions WHERE user_id = $1 ORDER BY created_at, id",
    "memories": "SELECT * FROM memories WHERE user_id = $1 ORDER BY created_at, id",
    "turns": "SELECT * FROM turns WHERE user_id = $1 ORDER BY started_at, id",
    "recordings": "SELECT * FROM recordings WHERE user_id = $1 ORDER BY started_at, id",
}
