"""Long-term memory on real Postgres, Milvus Lite and the ONNX embedder."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from parley.config import Settings
from pipeline.backends.local_embed import LocalEmbedder
from pipeline.memory import MemoryService, VectorStore
from storage import Store
from tests.storage.conftest import ROLES
from tests.storage.probe import milvus_ids


def words(text: str) -> int:
    return len(text.split())


@pytest.fixture
async def user(store: Store) -> str:
    return await store.create_user()


async def test_a_memory_survives_a_restart_and_reaches_the_prompt(
    settings: Settings, embedder: LocalEmbedder
):
    store = await Store.open(settings)
    await store.upsert_roles(ROLES)
    vectors = await VectorStore.open(settings, embedder.dim)
    user = await store.create_user()
    memory_id = await MemoryService(store, vectors, embedder).remember(
        user, "socrates", "My daughter is called Lena."
    )
    await vectors.close()  # also stops this process's Milvus Lite server: reopen reads disk
    await store.close()

    store = await Store.open(settings)
    vectors = await VectorStore.open(settings, embedder.dim)
    service = MemoryService(store, vectors, embedder)
    try:
        recalled = await service.recall(user, "socrates", "What is my daughter's name?")
        assert recalled == ["My daughter is called Lena."]
        (row,) = await store.memories.get([memory_id])
        assert row.embedding_id == memory_id and row.metadata["source"] == "explicit"
    finally:
        await service.close()
        await store.close()


async def test_near_duplicates_merge_into_one_memory(
    memory: MemoryService, store: Store, settings: Settings, user: str
):
    first = await memory.remember(user, "socrates", "I live in Paris.", "auto")
    again = await memory.remember(user, "socrates", "I live in  Paris now.", "explicit")
    different = await memory.remember(user, "socrates", "I hate green tea.")
    assert again == first and different not in (None, first)

    rows = {row.id: row for row in await store.memories.for_user(user)}
    assert set(rows) == {first, different}
    merged = rows[first]
    assert merged.text == "I live in Paris now."  # newest wording wins
    assert merged.metadata["mentions"] == 2
    assert merged.metadata["sources"] == ["auto", "explicit"]
    assert sorted(await milvus_ids(settings.data_path / "memory.db", user)) == sorted(rows)


async def test_recall_is_filtered_by_user_and_persona(memory: MemoryService, store: Store):
    ana, bo = await store.create_user(), await store.create_user()
    await memory.remember(ana, "socrates", "My dog is named Rex.")
    await memory.remember(bo, "socrates", "My dog is named Fido.")
    await memory.remember(ana, "holmes", "My dog is named Biscuit.")
    assert await memory.recall(ana, "socrates", "what is my dog called?") == ["My dog is named Rex."]
    assert await memory.recall(bo, "holmes", "what is my dog called?") == []


async def test_recall_respects_the_token_budget(memory: MemoryService, user: str):
    facts = [
        "I play the violin in an amateur orchestra on Tuesdays.",
        "I play the guitar.",
        "I play the piano every single morning before breakfast with my grandmother.",
        "I play the drums.",
        "I play the flute.",
    ]
    for fact in facts:
        await memory.remember(user, "socrates", fact)
    everything = await memory.recall(user, "socrates", "what instruments do I play?",
                                     budget_tokens=1000, k=5, count_tokens=words)
    assert sorted(everything) == sorted(facts)
    for budget in (4, 9, 15, 20):
        chosen = await memory.recall(user, "socrates", "what instruments do I play?",
                                     budget_tokens=budget, k=5, count_tokens=words)
        assert chosen and sum(map(words, chosen)) <= budget
        assert len(chosen) < len(facts)


async def test_recall_marks_memories_as_used(memory: MemoryService, store: Store, user: str):
    memory_id = await memory.remember(user, "socrates", "I am allergic to peanuts.", "auto")
    (before,) = await store.memories.get([memory_id])
    assert await memory.recall(user, "socrates", "do I have any allergies?")
    (after,) = await store.memories.get([memory_id])
    assert after.last_used_at >= before.last_used_at
    assert after.weight == pytest.approx(before.weight + memory.policy.recall_boost, rel=1e-3)


async def test_compaction_archives_faded_memories(
    memory: MemoryService, store: Store, settings: Settings, user: str
):
    auto = await memory.remember(user, "socrates", "I enjoy long walks by the sea.", "auto")
    explicit = await memory.remember(user, "socrates", "My passport number ends in 42.")
    now = datetime.now(UTC)
    assert await memory.compact(now + timedelta(days=1)) == 0
    # 75 days = 2.5 half-lives: auto 1.0 -> 0.18 (archived), explicit 2.0 -> 0.35 (kept).
    assert await memory.compact(now + timedelta(days=75)) == 1
    assert await memory.compact(now + timedelta(days=75)) == 0  # idempotent

    rows = {row.id: row for row in await store.memories.for_user(user)}
    assert rows[auto].archived and rows[auto].embedding_id is None
    assert not rows[explicit].archived
    assert await milvus_ids(settings.data_path / "memory.db", user) == [explicit]
    assert await memory.recall(user, "socrates", "do I like walking?") == []


async def test_capture_stores_statements_and_spoken_requests(memory: MemoryService, store: Store,
                                                             user: str):
    ids = await memory.capture(user, "socrates", "Hello! My name is Ana. What's the time?")
    ids += await memory.capture(user, "socrates", "Okay, remember that the code word is apricot.")
    ids += await memory.capture(user, "socrates", "Nice weather today.")
    rows = {row.id: row for row in await store.memories.for_user(user)}
    assert set(ids) == set(rows) and len(ids) == 2
    assert sorted((r.text, r.metadata["kind"]) for r in rows.values()) == [
        ("My name is Ana.", "name"), ("the code word is apricot.", "explicit")]
    assert await memory.recall(user, "socrates", "what was the code word?", k=1) == [
        "the code word is apricot."]


async def test_explicit_only_capture_ignores_statements(memory: MemoryService, user: str):
    said = "I live in Oslo. Remember that my locker is number 12."
    ids = await memory.capture(user, "holmes", said, explicit_only=True)
    assert len(ids) == 1
    assert await memory.recall(user, "holmes", "where do I live and which locker is mine?") == [
        "my locker is number 12."]


async def test_bad_input_is_refused(memory: MemoryService, user: str):
    assert await memory.remember(user, "socrates", "   \n ") is None
    with pytest.raises(ValueError):
        await memory.remember(user, "socrates", "x" * 1001)
    with pytest.raises(ValueError):
        await memory.remember("not-a-user", "socrates", "hello there")
    with pytest.raises(ValueError):
        await memory.remember(user, 'socrates" or user_id != "', "hello there")
    assert await memory.recall(user, "socrates", "  ") == []


async def test_a_failed_row_insert_leaves_no_vector(
    memory: MemoryService, settings: Settings, user: str
):
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await memory.remember(user, "no-such-persona", "I live in Oslo.")
    assert await milvus_ids(settings.data_path / "memory.db", user) == []


async def test_forget_user_removes_vectors_and_rows(
    memory: MemoryService, store: Store, settings: Settings, user: str
):
    other = await store.create_user()
    await memory.remember(user, "socrates", "I live in Oslo.")
    await memory.remember(user, "holmes", "I work as a pilot.")
    await memory.remember(other, "socrates", "I live in Rome.")
    assert await memory.forget_user(user) == 2
    assert await store.memories.for_user(user) == []
    assert await milvus_ids(settings.data_path / "memory.db", user) == []
    assert len(await milvus_ids(settings.data_path / "memory.db", other)) == 1
