"""The vector index of long-term memory, over pymilvus.

By default a Milvus Lite directory ``DATA_DIR/memory.db``; with ``PARLEY_MILVUS_URI=http(s)://…``
a Milvus server. One collection holds every user's memories with ``user_id``/``role_id``
scalar fields (inverted-indexed), so a recall is one filtered top-k search. Postgres stays
the source of truth: the vector's primary key is the memory row's id, and a hit whose row is
gone or archived is simply skipped by the caller.

Facts about Milvus Lite 3 (measured, see docs/storage.md) that shape this module:
- it runs inside this process as pure-Python threads behind a local gRPC port, and only
  one process may open a given file — several worker processes need a Milvus server;
- rows not yet flushed are searched by brute force in Python (10 000 unflushed rows: about
  200 ms per search, against 5 ms once flushed), so we flush every ``flush_every`` writes;
- a reopened collection must be loaded before it can be searched;
- its AUTOINDEX is an HNSW graph (with faiss installed) that misses matches under a selective
  filter — one user's 25 memories out of 10 000 came back as 2 hits for k=5 — so Lite gets
  an exact FLAT index, which only scans the rows that pass the filter.
pymilvus calls block, so every call goes through one single-worker executor.

Milvus may stop (a server restarted, Lite's in-process server released): a failed call
drops the client, is counted and logged once per outage (:mod:`parley.deps`, "milvus")
and raises :class:`VectorStoreUnavailable`; for ``RECONNECT_EVERY_S`` after that, calls
fail at once without touching pymilvus (whose own logs would print a traceback per call),
then the next call reconnects, and the store works again by itself once Milvus is back.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pymilvus import DataType, MilvusClient, MilvusException

from parley import deps
from parley.config import Settings
from pipeline.backends._local import ModelWorker

logger = logging.getLogger(__name__)

T = TypeVar("T")
COLLECTION = "parley_memories"
RECONNECT_EVERY_S = 1.0  # while Milvus is down, at most one connection attempt this often
#: pymilvus logs every failed RPC at ERROR with a traceback; the store reports failures itself
_PYMILVUS_LOGGERS = ("pymilvus.decorators", "pymilvus.client.connection_manager",
                     "milvus_lite.adapter.grpc.servicer")  # Milvus Lite's in-process server, per failed RPC
#: how Milvus says its disk is full: the disk is down, not Milvus (reads still work)
_DISK_FULL = ("No space left on device", "Disk quota exceeded")
_ID_MAX = 64
# Ids are interpolated into Milvus filter expressions, so only plain characters get through.
_SAFE_ID = re.compile(rf"^[A-Za-z0-9_.:-]{{1,{_ID_MAX}}}$")


def _check_id(value: str) -> str:
    if not _SAFE_ID.match(value):
        raise ValueError(f"id {value!r} is not usable in a vector filter")
    return value


class LiteBusyError(RuntimeError):
    """The Milvus Lite file could not be opened, typically because another process has it."""


class VectorStoreUnavailable(ConnectionError):
    """Milvus did not answer (or is known to be down); the caller goes on without memory."""


@dataclass(frozen=True, slots=True)
class VectorItem:
    id: str
    user_id: str
    role_id: str
    vector: np.ndarray


@dataclass(frozen=True, slots=True)
class Hit:
    id: str
    score: float  # cosine similarity, 1.0 = same direction


class VectorStore:
    """Async facade over one Milvus collection; create with :meth:`open`."""

    def __init__(
        self,
        client: MilvusClient,
        worker: ModelWorker,
        *,
        collection: str,
        lite_path: Path | None,
        flush_every: int,
        reconnect: Callable[[], MilvusClient] | None = None,
    ) -> None:
        self._client: MilvusClient | None = client
        self._worker = worker
        self._collection = collection
        self._lite_path = lite_path
        self._flush_every = flush_every
        self._reconnect = reconnect  # blocking; builds a fresh client (None: cannot)
        self._unflushed = 0
        self._closed = False
        self._failed_at: float | None = None  # monotonic time of the last failure, while down

    @classmethod
    async def open(
        cls,
        settings: Settings,
        dim: int,
        *,
        collection: str = COLLECTION,
        flush_every: int = 256,
    ) -> VectorStore:
        """Connect, create the collection if missing, and load it for search."""
        lite_path = None if settings.milvus_uri else settings.data_path / "memory.db"
        uri = settings.milvus_uri or str(lite_path)
        index = settings.milvus_index.upper()
        if index == "AUTO":
            index = "AUTOINDEX" if settings.milvus_uri else "FLAT"
        worker = ModelWorker("milvus")  # Milvus Lite's client is not thread-safe: one thread
        try:
            if lite_path is not None:
                lite_path.parent.mkdir(parents=True, exist_ok=True)
            client = await worker.run(_connect, uri, collection, dim, index)
        except BaseException as exc:
            await worker.close()
            if lite_path is not None and isinstance(exc, MilvusException):
                raise LiteBusyError(
                    f"cannot open Milvus Lite at {lite_path}: only one process may use it; "
                    "several workers need a Milvus server (PARLEY_MILVUS_URI)"
                ) from exc
            raise
        logger.info("vector store ready: %s collection=%s", "lite" if lite_path else "server",
                    collection)
        for name in _PYMILVUS_LOGGERS:
            logging.getLogger(name).setLevel(logging.CRITICAL)
        return cls(client, worker, collection=collection, lite_path=lite_path,
                   flush_every=flush_every, reconnect=lambda: _connect(uri, collection, dim, index))

    @property
    def available(self) -> bool:
        """False while Milvus is known to be down (since the last failed call)."""
        return self._failed_at is None

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(client, *args, **kwargs)`` on the worker thread, with outage handling."""
        if self._failed_at is not None and time.monotonic() - self._failed_at < RECONNECT_EVERY_S:
            error = VectorStoreUnavailable("milvus is down; retrying shortly")
            deps.failed("milvus", error, "long-term memory is skipped")
            raise error
        try:
            result = await self._worker.run(self._with_client, fn, args, kwargs)
        except MilvusException as exc:
            if any(words in str(exc) for words in _DISK_FULL):
                deps.failed("disk", exc, f"memories are not stored (first: Milvus at {self._lite_path or 'server'})")
                raise VectorStoreUnavailable(str(exc)[:200]) from exc
            self._failed_at = time.monotonic()
            await self._worker.run(self._drop_client)
            deps.failed("milvus", exc, "long-term memory is skipped")
            raise VectorStoreUnavailable(str(exc)[:200]) from exc
        if self._failed_at is not None:
            self._failed_at = None
            deps.ok("milvus")
        return result

    def _with_client(self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
        """Worker thread: reconnect if the last client was dropped, then make the call."""
        if self._client is None:
            if self._reconnect is None:
                raise MilvusException(message="no client and no way to reconnect")
            self._client = self._reconnect()
        return fn(self._client, *args, **kwargs)

    def _drop_client(self) -> None:
        """Worker thread: let go of a client whose server stopped answering."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    async def upsert(self, items: Sequence[VectorItem]) -> None:
        """Insert or replace vectors by id."""
        if not items:
            return
        rows = [
            {
                "id": _check_id(item.id),
                "user_id": _check_id(item.user_id),
                "role_id": _check_id(item.role_id),
                "embedding": np.asarray(item.vector, dtype=np.float32).tolist(),
            }
            for item in items
        ]
        await self._call(MilvusClient.upsert, self._collection, rows)
        deps.ok("disk")  # a write landed: a full disk (if it was) has room again
        await self._wrote(len(rows))

    async def search(
        self, vector: np.ndarray, user_id: str, role_id: str, k: int
    ) -> list[Hit]:
        """The ``k`` nearest memories of this user with this persona, best first."""
        expr = f'user_id == "{_check_id(user_id)}" and role_id == "{_check_id(role_id)}"'
        result = await self._call(
            MilvusClient.search,
            self._collection,
            data=[np.asarray(vector, dtype=np.float32).tolist()],
            filter=expr,
            limit=k,
            output_fields=["id"],
        )
        return [Hit(str(hit["id"]), float(hit["distance"])) for hit in result[0]]

    async def delete(self, ids: Sequence[str]) -> None:
        """Remove vectors by id (unknown ids are ignored)."""
        if ids:
            await self._call(MilvusClient.delete, self._collection, ids=list(ids))
            await self._wrote(len(ids))

    async def delete_user(self, user_id: str) -> None:
        """Remove every vector of ``user_id``, whatever the persona."""
        expr = f'user_id == "{_check_id(user_id)}"'
        await self._call(MilvusClient.delete, self._collection, filter=expr)
        await self._wrote(1)

    async def _wrote(self, count: int) -> None:
        """Keep Lite's brute-force memtable small; a server flushes on its own schedule."""
        if self._lite_path is None:
            return
        self._unflushed += count
        if self._unflushed >= self._flush_every:
            await self.flush()

    async def flush(self) -> None:
        """Persist and index pending writes now (bulk loaders call this at the end)."""
        await self._call(MilvusClient.flush, self._collection)
        self._unflushed = 0

    async def close(self) -> None:
        """Flush, disconnect and, for Lite, stop this process's in-process server; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._unflushed and self.available:
                with contextlib.suppress(VectorStoreUnavailable):
                    await self.flush()
            await self._worker.run(self._drop_client)
            if self._lite_path is not None:
                await self._worker.run(_release_lite, self._lite_path)
        finally:
            await self._worker.close()


def _connect(uri: str, collection: str, dim: int, index: str) -> MilvusClient:
    client = MilvusClient(uri)
    if not client.has_collection(collection):
        try:
            with _quiet_lite_grpc():
                client.create_collection(
                    collection, schema=_schema(client, dim), index_params=_indexes(client, index)
                )
        except MilvusException:
            # the workers of a node start together: another one may have created it first
            if not client.has_collection(collection):
                raise
    _check_dim(client.describe_collection(collection), dim)
    client.load_collection(collection)
    return client


@contextlib.contextmanager
def _quiet_lite_grpc() -> Iterator[None]:
    """Silence the in-process gRPC server and pymilvus while a collection is created.

    Creating a collection calls AllocTimestamp, which Milvus Lite does not implement;
    pymilvus falls back by itself, but grpc logs a traceback at ERROR first. And when
    another worker created the collection a moment before, pymilvus logs the failure with
    its traceback before :func:`_connect` finds the collection there (any other failure
    is raised, and logged once, by the caller).
    """
    loggers = [logging.getLogger(name) for name in ("grpc._server", "pymilvus.decorators")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


def _check_dim(description: dict[str, Any], dim: int) -> None:
    """Refuse a collection made by another embedder: its vectors would not compare."""
    fields = {f["name"]: f for f in description["fields"]}
    existing = int(fields["embedding"]["params"]["dim"])
    if existing != dim:
        raise ValueError(
            f"collection {description.get('collection_name')!r} holds {existing}-d vectors, "
            f"the embedder makes {dim}-d ones; use another collection or re-embed"
        )


def _schema(client: MilvusClient, dim: int) -> Any:
    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.VARCHAR, max_length=_ID_MAX, is_primary=True)
    schema.add_field("user_id", DataType.VARCHAR, max_length=_ID_MAX)
    schema.add_field("role_id", DataType.VARCHAR, max_length=_ID_MAX)
    schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=dim)
    return schema


def _indexes(client: MilvusClient, index: str) -> Any:
    params = client.prepare_index_params()
    params.add_index(field_name="embedding", index_type=index, metric_type="COSINE")
    params.add_index(field_name="user_id", index_type="INVERTED")
    params.add_index(field_name="role_id", index_type="INVERTED")
    return params


def _release_lite(path: Path) -> None:
    """Stop the in-process Milvus Lite server for ``path`` so a reopen reads from disk.

    pymilvus keeps one Lite server per file for the life of the process; releasing it is the
    only way to let another process open the file before this one exits.
    """
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(str(path))
