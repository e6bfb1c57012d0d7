"""The daily retention pass removes expired sessions (turns, windows), turn logs and memories
(rows and Milvus vectors) — and nothing that is still within its limit."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

from parley.config import Settings
from pipeline.backends.base import Message
from pipeline.memory import MemoryService
from pipeline.window import open_window
from signaling.retention import apply_retention
from storage import NewRecording, Store
from storage.recordings import LocalRecordings
from storage.records import new_id
from tests.storage.probe import milvus_ids, redis_keys


async def test_expired_rows_windows_and_vectors_go_fresh_ones_stay(
    settings: Settings, store: Store, memory: MemoryService
) -> None:
    settings = dataclasses.replace(settings, session_retention_days=90, turn_retention_days=30,
                                   memory_retention_days=365)
    window = open_window(settings)
    old_user, new_user = await store.create_user(), await store.create_user()
    old_session = await store.create_session(old_user, "socrates")
    new_session = await store.create_session(new_user, "socrates")
    now = datetime.now(UTC)
    for session, user in ((old_session, old_user), (new_session, new_user)):
        await window.append(session, Message("user", "hello"))
        await store.log_turn(session, user, "socrates", started_at=now - timedelta(days=40))
        await store.log_turn(session, user, "socrates", started_at=now)
    await store.pool.execute("UPDATE sessions SET last_active = $1 WHERE id = $2::uuid",
                             now - timedelta(days=91), old_session)
    stale = await memory.remember(old_user, "socrates", "I used to live in Lisbon.")
    fresh = await memory.remember(new_user, "socrates", "I have a cat named Miso.")
    await store.pool.execute("UPDATE memories SET last_used_at = $1 WHERE id = $2::uuid",
                             now - timedelta(days=400), stale)
    try:
        expired = await apply_retention(settings, store, memory, window, now=now)
        assert (expired.sessions, expired.windows, expired.memories) == (1, 1, 1)
        assert expired.turns == 1  # the new session's 40-day-old turn (the old session's went by cascade)
        assert await store.get_session(old_session) is None and await store.get_session(new_session) is not None
        assert await redis_keys(settings.redis_url, [old_session]) == []
        assert len(await redis_keys(settings.redis_url, [new_session])) == 1
        turns = await store.pool.fetch("SELECT session_id FROM turns")
        assert [t["session_id"].hex for t in turns] == [new_session]
        lite = settings.data_path / "memory.db"
        assert await milvus_ids(lite, old_user) == [] and len(await milvus_ids(lite, new_user)) == 1
        assert [m.id for m in await store.memories.for_user(new_user)] == [fresh]
        assert await store.memories.for_user(old_user) == []
        again = await apply_retention(settings, store, memory, window, now=now)
        assert again == type(again)(0, 0, 0, 0)
    finally:
        await window.purge([new_session, old_session])
        await window.close()


async def test_an_expired_sessions_recordings_leave_the_store_with_it(
    settings: Settings, store: Store, memory: MemoryService, tmp_path: Path
) -> None:
    settings = dataclasses.replace(settings, session_retention_days=90)
    sink = LocalRecordings(tmp_path / "recordings")
    window = open_window(settings)
    now = datetime.now(UTC)
    files = {}
    for age_days in (91, 1):
        user = await store.create_user()
        session = await store.create_session(user, "socrates")
        await store.pool.execute("UPDATE sessions SET last_active = $1 WHERE id = $2::uuid",
                                 now - timedelta(days=age_days), session)
        recording_id, spooled = new_id(), tmp_path / f"{age_days}.wav"
        await asyncio.to_thread(spooled.write_bytes, b"RIFF")
        key = f"{user}/{recording_id}.wav"
        await sink.put(spooled, key)
        await store.recordings.insert(NewRecording(recording_id, user, session, "c" * 32, key, "wav", 48000,
                                                   ("caller", "agent"), 1.0, 4, now, now))
        files[age_days] = Path(sink.describe(key))
    try:
        expired = await apply_retention(settings, store, memory, window, recordings=sink, now=now)
        assert expired.sessions == 1
        assert not await asyncio.to_thread(files[91].exists)
        assert await asyncio.to_thread(files[1].exists)
        assert await store.pool.fetchval("SELECT count(*) FROM recordings") == 1
    finally:
        await window.close()
