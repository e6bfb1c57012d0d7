"""Long-term memory: what a persona remembers about a user across calls.

Rows live in Postgres (:class:`storage.MemoryRows`), vectors in Milvus
(:class:`~pipeline.memory.vectors.VectorStore`) under the row's id. The policy:

- **store**: explicit saves (API, "remember that …") and statements the capture rules find
  important; a new text whose cosine to an existing memory of the same user and persona is
  at least ``duplicate_cosine`` merges into it (newest wording wins, mention count grows);
- **recall**: top-k by cosine within the user and persona, above ``min_recall_score``,
  packed into a token budget, best first; each recalled memory is reinforced;
- **fade**: a memory's strength halves every ``half_life_days`` without use; ``compact``
  archives those below ``archive_below`` and drops their vectors (the row stays for export
  until the user is deleted). Explicit memories start stronger and so last longer.

Writes are serialised by one lock so two near-duplicates said in quick succession cannot
both be inserted; there are few writes (one per remembered statement), so it costs nothing.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from parley.config import Settings
from pipeline.backends import registry
from pipeline.backends.base import Embedder
from pipeline.memory.capture import extract_statements, normalize
from pipeline.memory.vectors import VectorItem, VectorStore
from pipeline.window import CountTokens, approx_tokens
from storage import NewMemory, Store, canonical_id, retention

logger = logging.getLogger(__name__)

MAX_MEMORY_CHARS = 1000
_DAY_S = 86400.0


@dataclass(frozen=True, slots=True)
class MemoryPolicy:
    duplicate_cosine: float = 0.9
    min_recall_score: float = 0.2
    half_life_days: float = 30.0
    archive_below: float = 0.25
    explicit_weight: float = 2.0
    auto_weight: float = 1.0
    recall_boost: float = 0.5
    max_weight: float = 4.0

    @property
    def half_life_s(self) -> float:
        return self.half_life_days * _DAY_S


class MemoryService:
    """Remember, capture, recall, compact and forget; one instance per process.

    The service owns the vector store it is given (``close`` closes it); the SQL store and
    the embedder are shared with the rest of the process and stay open.
    """

    def __init__(
        self,
        store: Store,
        vectors: VectorStore,
        embedder: Embedder,
        policy: MemoryPolicy | None = None,
    ) -> None:
        self._store = store
        self._vectors = vectors
        self._embedder = embedder
        self.policy = policy or MemoryPolicy()
        self._write_lock = asyncio.Lock()

    async def remember(
        self, user_id: str, role_id: str, text: str, source: str = "explicit", *, kind: str = "note"
    ) -> str | None:
        """Store ``text`` (or merge it into a near-duplicate); returns the memory id.

        Returns None for text that is empty once whitespace is collapsed. Raises ValueError
        above MAX_MEMORY_CHARS or for a malformed user id. ``source`` is "explicit" (asked
        for) or "auto" (captured).
        """
        user_id = canonical_id(user_id)
        clean = normalize(text)
        if not clean:
            return None
        if len(clean) > MAX_MEMORY_CHARS:
            raise ValueError(f"a memory is at most {MAX_MEMORY_CHARS} characters")
        async with self._write_lock:
            (vector,) = await self._embedder.embed([clean])
            hits = await self._vectors.search(vector, user_id, role_id, k=1)
            if hits and hits[0].score >= self.policy.duplicate_cosine:
                merged = await self._merge(hits[0].id, clean, vector, user_id, role_id, source)
                if merged is not None:
                    return merged
            return await self._insert(clean, vector, user_id, role_id, source, kind)

    async def _insert(
        self, text: str, vector: np.ndarray, user_id: str, role_id: str, source: str, kind: str
    ) -> str:
        weight = self.policy.explicit_weight if source == "explicit" else self.policy.auto_weight
        metadata = {"source": source, "kind": kind, "mentions": 1}
        row = NewMemory(user_id, role_id, text, weight, metadata)
        # Vector first: a vector without a row is skipped at recall, a row without a vector
        # would silently never be recalled.
        await self._vectors.upsert([VectorItem(row.id, user_id, role_id, vector)])
        try:
            await self._store.memories.insert([row], datetime.now(UTC))
        except BaseException:
            await self._vectors.delete([row.id])
            raise
        logger.info("memory %s stored for user %s role %s (%s)", row.id, user_id, role_id, kind)
        logger.debug("memory %s: %d characters (memory text is never logged)", row.id, len(text))
        return row.id

    async def _merge(
        self,
        memory_id: str,
        text: str,
        vector: np.ndarray,
        user_id: str,
        role_id: str,
        source: str,
    ) -> str | None:
        """Fold ``text`` into memory ``memory_id``; None if that memory no longer exists."""
        rows = await self._store.memories.get([memory_id])
        if not rows:
            await self._vectors.delete([memory_id])  # orphan vector: its row is gone
            return None
        row = rows[0]
        sources = sorted({*row.metadata.get("sources", [row.metadata.get("source")]), source})
        metadata = {**row.metadata, "mentions": int(row.metadata.get("mentions", 1)) + 1,
                    "sources": sources}
        policy = self.policy
        merged = await self._store.memories.merge(
            memory_id, text, metadata, datetime.now(UTC),
            half_life_s=policy.half_life_s, boost=policy.recall_boost, max_weight=policy.max_weight,
        )
        if not merged:  # archived between the search and the update
            return None
        await self._vectors.upsert([VectorItem(memory_id, user_id, role_id, vector)])
        logger.info("memory %s merged a near-duplicate for user %s", memory_id, user_id)
        logger.debug("memory %s merged: now %d characters", memory_id, len(text))
        return memory_id

    async def capture(
        self, user_id: str, role_id: str, user_text: str, *, explicit_only: bool = False
    ) -> list[str]:
        """Remember the important statements of a final user transcript; returns their ids.

        ``explicit_only`` keeps just the spoken "remember that …" requests, for personas
        whose memory policy is "explicit".
        """
        ids = []
        for statement in extract_statements(user_text):
            if explicit_only and statement.kind != "explicit":
                continue
            source = "explicit" if statement.kind == "explicit" else "auto"
            memory_id = await self.remember(
                user_id, role_id, statement.text[:MAX_MEMORY_CHARS], source, kind=statement.kind
            )
            if memory_id is not None:
                ids.append(memory_id)
        return ids

    async def recall(
        self,
        user_id: str,
        role_id: str,
        query: str,
        budget_tokens: int = 1500,
        k: int = 5,
        count_tokens: CountTokens = approx_tokens,
    ) -> list[str]:
        """Texts of the memories most relevant to ``query``, best first, within the budget.

        A memory that does not fit the remaining budget is skipped and smaller ones after it
        may still fit. The returned memories count as used (reinforced, ``last_used_at``).
        """
        user_id = canonical_id(user_id)
        if not query.strip() or budget_tokens <= 0:
            return []
        (vector,) = await self._embedder.embed([query])
        hits = await self._vectors.search(vector, user_id, role_id, k=k)
        hits = [h for h in hits if h.score >= self.policy.min_recall_score]
        rows = {r.id: r for r in await self._store.memories.get([h.id for h in hits])}
        chosen: list[str] = []
        texts: list[str] = []
        used = 0
        for row in (rows[h.id] for h in hits if h.id in rows):
            cost = count_tokens(row.text)
            if used + cost > budget_tokens:
                continue
            chosen.append(row.id)
            texts.append(row.text)
            used += cost
        if chosen:
            policy = self.policy
            await self._store.memories.reinforce(
                chosen, datetime.now(UTC),
                half_life_s=policy.half_life_s, boost=policy.recall_boost,
                max_weight=policy.max_weight,
            )
        logger.debug("recalled %d memories (%d tokens) for user %s", len(texts), used, user_id)
        return texts

    async def compact(self, now: datetime | None = None) -> int:
        """Archive faded memories and drop their vectors; returns how many were archived."""
        faded = await self._store.memories.archive_faded(
            now or datetime.now(UTC),
            half_life_s=self.policy.half_life_s,
            threshold=self.policy.archive_below,
        )
        await self._vectors.delete(faded)
        if faded:
            logger.info("compaction archived %d memories", len(faded))
        return len(faded)

    async def forget_user(self, user_id: str) -> int:
        """Delete every memory of ``user_id``: vectors, then rows. Returns rows deleted."""
        user_id = canonical_id(user_id)
        await self._vectors.delete_user(user_id)
        count = await self._store.memories.delete_for_user(user_id)
        logger.info("forgot %d memories of user %s", count, user_id)
        return count

    async def expire(self, before: datetime) -> int:
        """Delete memories unused since ``before`` (retention): vectors first, then rows."""
        expired = await retention.expired_memories(self._store.pool, before)
        if not expired:
            return 0
        await self._vectors.delete([vector for _, vector in expired if vector])
        return await retention.delete_memories(self._store.pool, [memory for memory, _ in expired])

    async def forget(self, user_id: str, memory_id: str) -> bool:
        """Delete one memory of ``user_id``: its vector, then its row. False if it is not theirs."""
        embedding = await self._store.memories.embedding_of(user_id, memory_id)
        if embedding is None:
            return False
        if embedding:
            await self._vectors.delete([embedding])
        return await self._store.memories.delete_one(user_id, memory_id)

    async def close(self) -> None:
        await self._vectors.close()


async def open_memory(settings: Settings, store: Store) -> MemoryService:
    """The memory service for ``settings``: the configured embedder and its vector store."""
    embedder: Embedder = registry.get("embed", settings.embed, settings)
    vectors = await VectorStore.open(settings, embedder.dim)
    return MemoryService(store, vectors, embedder)
