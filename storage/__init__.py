"""Durable storage: Postgres via asyncpg, embedded (pgserver) when no server is configured."""

from storage.memories import MemoryRows
from storage.postgres import MigrationError
from storage.recording_rows import NewRecording, RecordingRows
from storage.recordings import RecordingSink, open_sink
from storage.records import (
    MemoryRecord,
    NewMemory,
    Role,
    SessionRecord,
    User,
    canonical_id,
)
from storage.store import Store
from storage.windows import WindowRows

__all__ = [
    "MemoryRecord",
    "MemoryRows",
    "MigrationError",
    "NewMemory",
    "NewRecording",
    "RecordingRows",
    "RecordingSink",
    "Role",
    "SessionRecord",
    "Store",
    "User",
    "WindowRows",
    "canonical_id",
    "open_sink",
]
