"""Postgres plumbing: the embedded server, the asyncpg pool and the schema migrations.

These are the three steps that must happen, in order, before any query — find or start a
server, connect, bring the schema up to date — and none of them knows about Parley's rows,
so they live apart from :mod:`storage.store`.

Migrations are plain SQL files ``NNN_name.sql`` next to this module. They run at start-up in
one transaction that first takes a transaction-scoped advisory lock: when two worker
processes start at once, the second waits, then finds everything applied and does nothing.
A checksum per applied file catches a migration edited after it shipped.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Arbitrary but fixed: every Parley process must use the same key to serialise migrations.
_MIGRATION_LOCK_KEY = 0x50_41_52_4C  # "PARL"
_MIGRATION_FILE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")

_CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(RuntimeError):
    """The migration files and the database's ledger disagree; start-up must stop."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migrations in ``directory``, by version; a misnamed ``.sql`` file is an error."""
    migrations: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_FILE.match(path.name)
        if match is None:
            raise MigrationError(f"migration file {path.name!r} is not named NNN_name.sql")
        migrations.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions in {directory}")
    return migrations


async def migrate(conn: asyncpg.Connection, migrations: list[Migration]) -> list[int]:
    """Apply the missing ``migrations`` atomically; returns the versions applied now."""
    applied_now: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK_KEY)
        await conn.execute(_CREATE_LEDGER)
        rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
        ledger = {row["version"]: row["checksum"] for row in rows}
        for migration in migrations:
            if migration.version in ledger:
                if ledger[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version:03d}_{migration.name} was changed "
                        "after it was applied; add a new migration instead"
                    )
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.checksum,
            )
            applied_now.append(migration.version)
    return applied_now


async def _init_connection(conn: asyncpg.Connection) -> None:
    """jsonb columns in and out as Python dicts/lists, for every pooled connection."""
    for type_name in ("jsonb", "json"):
        await conn.set_type_codec(
            type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


async def create_pool(url: str, *, max_size: int) -> asyncpg.Pool:
    """An asyncpg pool whose connections speak JSON for jsonb columns."""
    return await asyncpg.create_pool(url, min_size=1, max_size=max_size, init=_init_connection)


def describe_url(url: str) -> str:
    """``url`` without credentials, for logs."""
    return re.sub(r"//[^@/]*@", "//", url)


class EmbeddedPostgres:
    """A pgserver-managed Postgres living in one directory, for machines without a server.

    pgserver counts the processes using a data directory and stops the server when the last
    one lets go (at :meth:`stop` or at interpreter exit), so worker processes of one node can
    share it. Starting is blocking (initdb, pg_ctl), hence the thread.
    """

    def __init__(self, server: Any) -> None:
        self._server = server
        self._stopped = False

    @classmethod
    async def start(cls, directory: Path) -> EmbeddedPostgres:
        directory.parent.mkdir(parents=True, exist_ok=True)
        server = await asyncio.to_thread(_start_pgserver, directory)
        logger.info("embedded postgres ready in %s", directory)
        return cls(server)

    @property
    def url(self) -> str:
        return str(self._server.get_uri())

    async def stop(self) -> None:
        """Let go of the server (stops it if no other process uses it); idempotent."""
        if self._stopped:
            return
        self._stopped = True
        await asyncio.to_thread(self._server.cleanup)


def _start_pgserver(directory: Path) -> Any:
    # pgserver's lock file lives in the XDG runtime dir; without one (root shells, CI) platformdirs
    # warns and falls back to /tmp/runtime-<uid>, which is fine for a lock file.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        from pgserver.postgres_server import get_server

        return get_server(directory, cleanup_mode="stop")
