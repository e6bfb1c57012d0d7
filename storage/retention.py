"""Retention: the SQL that removes rows older than the configured limits.

Called once a day by the signaling layer (``signaling.retention``), which also removes what
lives outside Postgres (memory vectors in Milvus, conversation windows in Redis). A limit of
0 days keeps rows forever.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg


async def expire_sessions(pool: asyncpg.Pool, before: datetime) -> list[str]:
    """Delete sessions last active before ``before`` (their turns go by cascade); their ids."""
    rows = await pool.fetch("DELETE FROM sessions WHERE last_active < $1 RETURNING id", before)
    return [row["id"].hex for row in rows]


async def expire_turns(pool: asyncpg.Pool, before: datetime) -> int:
    """Delete turn-log rows started before ``before``; how many went."""
    status: str = await pool.execute("DELETE FROM turns WHERE started_at < $1", before)
    return int(status.split()[-1])


async def expired_memories(pool: asyncpg.Pool, before: datetime) -> list[tuple[str, str]]:
    """(memory id, vector id) of memories not used since ``before``."""
    rows = await pool.fetch("SELECT id, embedding_id FROM memories WHERE last_used_at < $1", before)
    return [(row["id"].hex, row["embedding_id"] or "") for row in rows]


async def delete_memories(pool: asyncpg.Pool, ids: list[str]) -> int:
    status: str = await pool.execute("DELETE FROM memories WHERE id = ANY($1::uuid[])", ids)
    return int(status.split()[-1])
