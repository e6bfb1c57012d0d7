"""The Milvus vector store on its own: filtered search stays exact, ids are checked."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator

import numpy as np
import pytest

from parley.config import REPO_ROOT, Settings
from pipeline.backends.local_embed import LocalEmbedder
from pipeline.memory import VectorItem, VectorStore
from signaling.embedded import shared_services

DIM = 384


def unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(params=["lite file", "lite server"])
async def any_vectors(request: pytest.FixtureRequest, settings: Settings,
                      embedder: LocalEmbedder) -> AsyncIterator[VectorStore]:
    """The vector store in-process, and on a Milvus Lite *server* as ``parley serve
    --workers N`` starts it."""
    if request.param == "lite file":
        vectors = await VectorStore.open(settings, embedder.dim)
        try:
            yield vectors
        finally:
            await vectors.close()
        return
    with shared_services(settings) as served:
        assert served.milvus_uri.startswith("http://") and served.milvus_index == "FLAT"
        vectors = await VectorStore.open(served, embedder.dim)
        try:
            yield vectors
        finally:
            await vectors.close()


async def test_a_selective_filter_still_finds_k_hits(any_vectors: VectorStore):
    """A user's handful of vectors among thousands of others: all k come back, exactly --
    in-process, and on the Milvus Lite server several workers share (both with the exact
    FLAT index)."""
    vectors = any_vectors
    rng = np.random.default_rng(3)
    crowd = unit_vectors(rng, 3000)
    others = [uuid.uuid4().hex for _ in range(100)]
    await vectors.upsert([VectorItem(uuid.uuid4().hex, others[i % 100], "socrates", v)
                          for i, v in enumerate(crowd)])
    mine = unit_vectors(rng, 8)
    user = uuid.uuid4().hex
    ids = [uuid.uuid4().hex for _ in mine]
    await vectors.upsert([VectorItem(i, user, "socrates", v) for i, v in zip(ids, mine, strict=True)])
    await vectors.flush()

    query = unit_vectors(rng, 1)[0]
    hits = await vectors.search(query, user, "socrates", k=5)
    expected = sorted(range(8), key=lambda i: -float(mine[i] @ query))[:5]
    assert [h.id for h in hits] == [ids[i] for i in expected]
    assert [h.score for h in hits] == pytest.approx([float(mine[i] @ query) for i in expected],
                                                    abs=1e-4)


async def test_delete_and_delete_user(vectors: VectorStore):
    rng = np.random.default_rng(4)
    user = uuid.uuid4().hex
    v = unit_vectors(rng, 3)
    await vectors.upsert([VectorItem(str(i), user, "holmes", v[i]) for i in range(3)])
    await vectors.delete(["0"])
    assert {h.id for h in await vectors.search(v[0], user, "holmes", k=5)} == {"1", "2"}
    await vectors.delete_user(user)
    assert await vectors.search(v[0], user, "holmes", k=5) == []


@pytest.mark.parametrize("bad", ['x" or user_id != "', "", "a" * 65, "role with spaces"])
async def test_ids_that_could_escape_a_filter_are_refused(vectors: VectorStore, bad: str):
    with pytest.raises(ValueError):
        await vectors.search(np.zeros(DIM, np.float32), uuid.uuid4().hex, bad, k=1)


_OPEN_IN_CHILD = """
import asyncio, sys
from parley.config import Settings
from pipeline.memory.vectors import LiteBusyError, VectorStore

async def main(data_dir):
    try:
        await VectorStore.open(Settings(data_dir=data_dir), 384)
    except LiteBusyError as exc:
        print("busy:", exc)

asyncio.run(main(sys.argv[1]))
"""


async def test_a_second_process_gets_a_clear_error_for_a_busy_lite_file(
    vectors: VectorStore, settings: Settings
):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _OPEN_IN_CHILD, settings.data_dir, cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    assert out.decode().startswith("busy:") and "PARLEY_MILVUS_URI" in out.decode()
