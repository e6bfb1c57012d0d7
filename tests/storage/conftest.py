"""Storage-test fixtures: Store, Milvus Lite vectors and the ONNX embedder, on the real
Postgres and Redis of ``tests/conftest.py`` (a new empty database per test, so migrations
always start from nothing; Redis keys named by fresh random ids, never a flush)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from parley.config import Settings
from pipeline.backends.local_embed import LocalEmbedder
from pipeline.memory import MemoryService, VectorStore
from storage import Store

ROLES = [
    {"id": "socrates", "name": "Socrates", "system_prompt": "You are Socrates.", "voice": "joe"},
    {"id": "holmes", "name": "Holmes", "system_prompt": "You are Holmes.", "voice": "joe"},
]


@pytest.fixture
def settings(tmp_path: Path, database_url: str, redis_url: str) -> Settings:
    return Settings(
        data_dir=str(tmp_path / "data"),
        database_url=database_url,
        redis_url=redis_url,
        milvus_uri="",
        embed="local",
    )


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[Store]:
    store = await Store.open(settings)
    await store.upsert_roles(ROLES)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture(scope="session")
def embedder() -> Iterator[LocalEmbedder]:
    """The real MiniLM model, loaded once for the whole run."""
    model = LocalEmbedder()
    yield model
    asyncio.run(model.close())


@pytest.fixture
async def vectors(settings: Settings, embedder: LocalEmbedder) -> AsyncIterator[VectorStore]:
    vectors = await VectorStore.open(settings, embedder.dim)
    try:
        yield vectors
    finally:
        await vectors.close()


@pytest.fixture
def memory(store: Store, vectors: VectorStore, embedder: LocalEmbedder) -> MemoryService:
    return MemoryService(store, vectors, embedder)
