"""The ``memories`` table: the durable half of long-term memory (Milvus holds the vectors).

The policy (what to keep, how fast it fades) belongs to :mod:`pipeline.memory.service`; this
module only knows the arithmetic it needs in SQL. A memory's ``weight`` is its strength at
``last_used_at``; its strength at time ``t`` is ``weight * 0.5 ** ((t - last_used_at) /
half_life)``. Storing the strength at last use (instead of decaying the stored number on every
compaction) keeps compaction idempotent and lets a recall reinforce a memory in one UPDATE.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from storage.records import MemoryRecord, NewMemory, parse_uuid

# Strength at $1 (a timestamp) with half-life $2 (seconds); shared by reinforce and archive.
_STRENGTH = "weight * power(0.5, extract(epoch FROM ($1 - last_used_at)) / $2)"


def _uuids(ids: Sequence[str]) -> list[Any]:
    return [u for u in map(parse_uuid, ids) if u is not None]


class MemoryRows:
    """Row operations on ``memories``; one instance per :class:`~storage.Store`."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def insert(self, rows: Sequence[NewMemory], now: datetime) -> None:
        """Insert ``rows`` (already indexed in Milvus under their own id) as used at ``now``."""
        await self._pool.executemany(
            """
            INSERT INTO memories
                (id, user_id, role_id, text, embedding_id, metadata, weight,
                 created_at, last_used_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
            """,
            [
                (parse_uuid(r.id), parse_uuid(r.user_id), r.role_id, r.text, r.id, r.metadata,
                 r.weight, now)
                for r in rows
            ],
        )

    async def get(self, ids: Sequence[str]) -> list[MemoryRecord]:
        """The active (not archived) memories among ``ids``, in no particular order."""
        rows = await self._pool.fetch(
            "SELECT * FROM memories WHERE id = ANY($1::uuid[]) AND NOT archived", _uuids(ids)
        )
        return [MemoryRecord.from_row(row) for row in rows]

    async def for_user(self, user_id: str) -> list[MemoryRecord]:
        """Every memory of ``user_id``, archived ones included, oldest first."""
        rows = await self._pool.fetch(
            "SELECT * FROM memories WHERE user_id = $1 ORDER BY created_at, id",
            parse_uuid(user_id),
        )
        return [MemoryRecord.from_row(row) for row in rows]

    async def merge(
        self,
        memory_id: str,
        text: str,
        metadata: Mapping[str, Any],
        now: datetime,
        *,
        half_life_s: float,
        boost: float,
        max_weight: float,
    ) -> bool:
        """Replace an active memory's text/metadata and reinforce it; False if it is gone."""
        status: str = await self._pool.execute(
            f"""
            UPDATE memories
               SET text = $3, metadata = $4,
                   weight = LEAST($6, {_STRENGTH} + $5), last_used_at = $1
             WHERE id = $7 AND NOT archived
            """,
            now, half_life_s, text, dict(metadata), boost, max_weight, parse_uuid(memory_id),
        )
        return status != "UPDATE 0"

    async def reinforce(
        self,
        ids: Sequence[str],
        now: datetime,
        *,
        half_life_s: float,
        boost: float,
        max_weight: float,
    ) -> None:
        """Mark ``ids`` as used at ``now``: decayed strength plus ``boost``, capped."""
        await self._pool.execute(
            f"""
            UPDATE memories
               SET weight = LEAST($4, {_STRENGTH} + $3), last_used_at = $1
             WHERE id = ANY($5::uuid[]) AND NOT archived
            """,
            now, half_life_s, boost, max_weight, _uuids(ids),
        )

    async def archive_faded(
        self, now: datetime, *, half_life_s: float, threshold: float
    ) -> list[str]:
        """Archive memories whose strength at ``now`` is below ``threshold``.

        Returns the embedding ids they had, for removal from the vector index.
        """
        rows = await self._pool.fetch(
            f"""
            UPDATE memories AS m
               SET archived = true, embedding_id = NULL
              FROM (SELECT id, embedding_id FROM memories
                     WHERE NOT archived AND {_STRENGTH} < $3
                     FOR UPDATE) AS old
             WHERE m.id = old.id
            RETURNING old.embedding_id
            """,
            now, half_life_s, threshold,
        )
        return [row["embedding_id"] for row in rows if row["embedding_id"]]

    async def delete_for_user(self, user_id: str) -> int:
        """Delete every memory row of ``user_id``; returns how many went."""
        status = await self._pool.execute(
            "DELETE FROM memories WHERE user_id = $1", parse_uuid(user_id)
        )
        return int(status.split()[-1])

    async def embedding_of(self, user_id: str, memory_id: str) -> str | None:
        """The vector id of ``user_id``'s memory ``memory_id`` ("" if it has none); None if no such memory."""
        mid, uid = parse_uuid(memory_id), parse_uuid(user_id)
        if mid is None or uid is None:
            return None
        row = await self._pool.fetchrow(
            "SELECT embedding_id FROM memories WHERE id = $1 AND user_id = $2", mid, uid
        )
        return None if row is None else (row["embedding_id"] or "")

    async def delete_one(self, user_id: str, memory_id: str) -> bool:
        """Delete ``user_id``'s memory ``memory_id``; False if there was none."""
        mid, uid = parse_uuid(memory_id), parse_uuid(user_id)
        if mid is None or uid is None:
            return False
        status = await self._pool.execute("DELETE FROM memories WHERE id = $1 AND user_id = $2", mid, uid)
        return int(status.split()[-1]) > 0
