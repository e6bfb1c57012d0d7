"""The ``recordings`` table: one row per consented, recorded call or room speaker (the audio
is in a sink).

Rows cascade away with their user or session; callers that delete users or expire sessions
ask here first for the keys of the audio to remove (``storage.recordings``), so no blob
outlives its row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from storage.records import jsonable, parse_uuid


@dataclass(frozen=True, slots=True)
class NewRecording:
    """What is known about a recording once its file is stored."""

    id: str
    user_id: str
    session_id: str
    call_id: str
    key: str
    format: str
    sample_rate: int
    channels: tuple[str, ...]
    duration_s: float
    bytes: int
    started_at: datetime
    ended_at: datetime
    room_id: str | None = None  # a room speaker's track: ``call_id`` is then the participant's id


class RecordingRows:
    """Row operations on ``recordings``; one instance per :class:`~storage.Store`."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def insert(self, rec: NewRecording) -> None:
        await self._pool.execute(
            """
            INSERT INTO recordings (id, user_id, session_id, call_id, key, format, sample_rate, channels,
                                    duration_s, bytes, started_at, ended_at, room_id)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
            """,
            parse_uuid(rec.id), parse_uuid(rec.user_id), parse_uuid(rec.session_id), rec.call_id, rec.key,
            rec.format, rec.sample_rate, list(rec.channels), rec.duration_s, rec.bytes, rec.started_at,
            rec.ended_at, rec.room_id,
        )

    async def for_user(self, user_id: str) -> list[dict[str, Any]]:
        """The user's recordings, oldest first, JSON-ready."""
        uid = parse_uuid(user_id)
        if uid is None:
            return []
        rows = await self._pool.fetch("SELECT * FROM recordings WHERE user_id = $1 ORDER BY started_at, id", uid)
        return [jsonable(r) for r in rows]

    async def get(self, user_id: str, recording_id: str) -> dict[str, Any] | None:
        """One recording of ``user_id`` (None if it is not there, or not theirs)."""
        uid, rid = parse_uuid(user_id), parse_uuid(recording_id)
        if uid is None or rid is None:
            return None
        row = await self._pool.fetchrow("SELECT * FROM recordings WHERE id = $1 AND user_id = $2", rid, uid)
        return jsonable(row) if row else None

    async def keys_of_user(self, user_id: str) -> list[str]:
        uid = parse_uuid(user_id)
        if uid is None:
            return []
        return [r["key"] for r in await self._pool.fetch("SELECT key FROM recordings WHERE user_id = $1", uid)]

    async def keys_of_idle_sessions(self, before: datetime) -> list[str]:
        """Keys of the recordings of sessions last active before ``before`` (retention)."""
        rows = await self._pool.fetch(
            """
            SELECT r.key FROM recordings r JOIN sessions s ON s.id = r.session_id
             WHERE s.last_active < $1
            """,
            before,
        )
        return [r["key"] for r in rows]
