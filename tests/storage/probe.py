"""Look into each backing service directly (not through the code under test)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import redis.asyncio as aioredis
from pymilvus import MilvusClient

from pipeline.memory.vectors import COLLECTION
from storage import Store

USER_TABLES = ("users", "sessions", "memories", "turns")


async def pg_rows(store: Store, user_id: str) -> dict[str, int]:
    """Rows per table that belong to ``user_id``."""
    counts = {}
    for table in USER_TABLES:
        column = "id" if table == "users" else "user_id"
        counts[table] = await store.pool.fetchval(
            f"SELECT count(*) FROM {table} WHERE {column} = $1::uuid", user_id
        )
    return counts


async def redis_keys(url: str, ids: list[str]) -> list[bytes]:
    """Every key on the Redis server whose name contains one of ``ids``."""
    client = aioredis.from_url(url)
    try:
        found = []
        for ident in ids:
            found += [key async for key in client.scan_iter(match=f"*{ident}*")]
        return found
    finally:
        await client.aclose()


def _milvus_ids(lite_path: Path, user_id: str) -> list[str]:
    client = MilvusClient(str(lite_path))  # same process: shares the open Lite server
    try:
        client.load_collection(COLLECTION)  # released if the server that wrote it has closed
        rows = client.query(COLLECTION, filter=f'user_id == "{user_id}"', output_fields=["id"])
        return [row["id"] for row in rows]
    finally:
        client.close()


async def milvus_ids(lite_path: Path, user_id: str) -> list[str]:
    """Ids of the vectors stored for ``user_id`` in the Milvus Lite directory."""
    return await asyncio.to_thread(_milvus_ids, lite_path, user_id)
