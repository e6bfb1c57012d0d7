"""The ``session_windows`` table: each session's conversation window, one JSON list per row.

The window's rules (trimming, barge-in) live in :mod:`pipeline.window`; this module only
stores the latest list of entries and reads it back, so a single-node server (no Redis)
can resume a session's conversation after a restart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from storage.records import parse_uuid


class WindowRows:
    """Row operations on ``session_windows``; one instance per :class:`~storage.Store`."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def load(self, session_id: str, max_age_s: float) -> list[dict[str, Any]]:
        """The stored entries, oldest first; [] when none were written in ``max_age_s``
        (a window left alone that long has expired, as it would in memory or Redis)."""
        sid = parse_uuid(session_id)
        if sid is None:
            return []
        entries = await self._pool.fetchval(
            """
            SELECT entries FROM session_windows
             WHERE session_id = $1 AND updated_at > now() - make_interval(secs => $2)
            """,
            sid, float(max_age_s),
        )
        return list(entries or [])

    async def save(self, session_id: str, entries: Sequence[dict[str, Any]]) -> None:
        """Replace the session's entries; nothing is stored for a session that has no row
        (deleted meanwhile, or never stored)."""
        sid = parse_uuid(session_id)
        if sid is None:
            return
        try:
            await self._pool.execute(
                """
                INSERT INTO session_windows (session_id, entries)
                SELECT $1, $2 WHERE EXISTS (SELECT 1 FROM sessions WHERE id = $1)
                ON CONFLICT (session_id) DO UPDATE
                   SET entries = EXCLUDED.entries, updated_at = now()
                """,
                sid, list(entries),
            )
        except asyncpg.ForeignKeyViolationError:
            pass  # the session was deleted between the check and the insert: nothing to keep

    async def delete(self, session_ids: Sequence[str]) -> int:
        """Forget the windows of ``session_ids``; how many there were."""
        sids = [u for u in map(parse_uuid, session_ids) if u is not None]
        if not sids:
            return 0
        status: str = await self._pool.execute(
            "DELETE FROM session_windows WHERE session_id = ANY($1::uuid[])", sids
        )
        return int(status.split()[-1])
