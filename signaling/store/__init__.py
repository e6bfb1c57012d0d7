"""Durable storage: Postgres via asyncpg, embedded (pgserver) when no server is configured."""

from signaling.store.memories import MemoryRows
from signaling.store.postgres import MigrationError
from signaling.store.records import (
    MemoryRecord,
    NewMemory,
    Role,
    SessionRecord,
    User,
    canonical_id,
)
from signaling.store.store import Store

__all__ = [
    "MemoryRecord",
    "MemoryRows",
    "MigrationError",
    "NewMemory",
    "Role",
    "SessionRecord",
    "Store",
    "User",
    "canonical_id",
]
