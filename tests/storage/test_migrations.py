"""Schema migrations: from an empty database, re-run as a no-op, concurrent start-up, drift."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from parley.config import Settings
from storage import MigrationError, Store
from storage.postgres import load_migrations, migrate
from tests.conftest import world_traversable_dir

TABLES = {"users", "roles", "sessions", "memories", "turns", "room_transcript", "session_windows",
          "recordings", "schema_migrations"}


async def _tables(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    )
    return {row["table_name"] for row in rows}


async def test_migrations_from_empty_then_rerun_is_noop(database_url: str, settings: Settings):
    conn = await asyncpg.connect(database_url)
    try:
        assert await _tables(conn) == set()
        store = await Store.open(settings)
        await store.close()
        assert await _tables(conn) == TABLES
        ledger = await conn.fetch("SELECT version, applied_at FROM schema_migrations")
        assert [r["version"] for r in ledger] == [m.version for m in load_migrations()]

        assert await migrate(conn, load_migrations()) == []
        store = await Store.open(settings)
        await store.close()
        assert await conn.fetch("SELECT version, applied_at FROM schema_migrations") == ledger
    finally:
        await conn.close()


async def test_two_processes_migrating_at_once_apply_each_version_once(database_url: str):
    first, second = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    try:
        applied = await asyncio.gather(
            migrate(first, load_migrations()), migrate(second, load_migrations())
        )
        versions = [m.version for m in load_migrations()]
        assert sorted(applied, key=len) == [[], versions]
        assert await first.fetchval("SELECT count(*) FROM schema_migrations") == len(versions)
    finally:
        await first.close()
        await second.close()


async def test_edited_or_misnamed_migration_is_refused(database_url: str, tmp_path: Path):
    (tmp_path / "001_things.sql").write_text("CREATE TABLE things (id int);")
    conn = await asyncpg.connect(database_url)
    try:
        assert await migrate(conn, load_migrations(tmp_path)) == [1]
        (tmp_path / "001_things.sql").write_text("CREATE TABLE things (id bigint);")
        with pytest.raises(MigrationError, match="changed"):
            await migrate(conn, load_migrations(tmp_path))
    finally:
        await conn.close()
    (tmp_path / "2_more.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="NNN_name"):
        load_migrations(tmp_path)


async def test_without_database_url_an_embedded_postgres_starts_under_data_dir():
    with world_traversable_dir() as directory:
        await _embedded_store_keeps_rows(directory / "data")


async def _embedded_store_keeps_rows(data_dir: Path) -> None:
    settings = Settings(data_dir=str(data_dir), database_url="")
    store = await Store.open(settings)
    try:
        user_id = await store.create_user("ana")
    finally:
        await store.close()
    assert (data_dir / "pg" / "PG_VERSION").is_file()

    store = await Store.open(settings)  # restarted: same data directory, same rows
    try:
        user = await store.get_user(user_id)
        assert user is not None and user.username == "ana"
    finally:
        await store.close()
