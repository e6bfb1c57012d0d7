"""Long-term memory benchmark: recall latency with 10 000 stored memories.

Everything runs embedded and throw-away, in a temp directory: Postgres (pgserver), Milvus
Lite and the local MiniLM embedder — the default single-node stack. The memories are
synthetic first-person facts for a spread of users and two personas, inserted in bulk (the
dedupe path of ``remember`` is not what is measured here). Then, after a short warm-up, each
query is timed three ways on ``time.perf_counter``:

- ``recall``: ``MemoryService.recall`` end to end — embed the query, filtered top-5 search,
  fetch the rows, pack the token budget, reinforce the recalled rows;
- ``search``: the filtered Milvus search alone, with a precomputed query vector;
- ``embed``: the query embedding alone.

Writes ``memory.json`` (figures + setup) and ``memory.png`` (latency CDFs) into ``out_dir``.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from parley.config import REPO_ROOT, Settings
from pipeline.backends.local_embed import LocalEmbedder
from pipeline.memory import MemoryService, VectorItem, VectorStore
from storage import NewMemory, Store

MEMORIES = 10_000
USERS = 200
ROLES = ("socrates", "holmes")
QUERIES = 200
WARMUP = 10
BATCH = 500
SEED = 7

_CITIES = ["Lisbon", "Oslo", "Lagos", "Lima", "Kyoto", "Perth", "Quebec", "Tunis", "Graz", "Cork"]
_FOODS = ["ramen", "paella", "dumplings", "falafel", "goulash", "pho", "tacos", "risotto"]
_JOBS = ["nurse", "pilot", "baker", "teacher", "plumber", "architect", "librarian", "chemist"]
_NAMES = ["Lena", "Omar", "Ines", "Kofi", "Mei", "Tomas", "Aiko", "Ravi", "Zoe", "Elif"]
_RELATIVES = ["sister", "brother", "daughter", "son", "cousin", "grandmother", "partner"]
_HOBBIES = ["chess", "climbing", "knitting", "sailing", "painting", "running", "gardening"]
_PETS = ["cats", "dogs", "parrots", "rabbits", "goldfish"]
_TEMPLATES = [
    "I live in {city} near the old harbour.",
    "My favourite food is {food}, especially on {day}.",
    "I work as a {job} in {city}.",
    "My {relative} is called {name} and lives in {city}.",
    "I have {n} {pets} at home.",
    "I love {hobby} on {day} mornings.",
    "I am allergic to {food}.",
    "I grew up in {city} and moved away at {n}teen.",
]
_QUESTIONS = [
    "Where do I live?", "What food do I like?", "What is my job?", "Who is my {relative}?",
    "Do I have pets?", "What do I do for fun?", "Am I allergic to anything?", "Where did I grow up?",
]
_DAYS = ["Mondays", "Fridays", "Sundays", "Saturdays"]


def _fact(rng: random.Random) -> str:
    return rng.choice(_TEMPLATES).format(
        city=rng.choice(_CITIES), food=rng.choice(_FOODS), job=rng.choice(_JOBS),
        name=rng.choice(_NAMES), relative=rng.choice(_RELATIVES), hobby=rng.choice(_HOBBIES),
        pets=rng.choice(_PETS), n=rng.randint(2, 9), day=rng.choice(_DAYS),
    )


def _question(rng: random.Random) -> str:
    return rng.choice(_QUESTIONS).format(relative=rng.choice(_RELATIVES))


def _summary(samples_ms: list[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)
    return {
        "p50": round(statistics.median(ordered), 2),
        "p95": round(ordered[int(0.95 * (len(ordered) - 1))], 2),
        "mean": round(statistics.fmean(ordered), 2),
        "max": round(ordered[-1], 2),
        "n": len(ordered),
    }


async def _timed(call: Awaitable[Any]) -> tuple[float, Any]:
    """(milliseconds taken, result) of one awaited call."""
    start = time.perf_counter()
    result = await call
    return (time.perf_counter() - start) * 1000.0, result


async def _fill(store: Store, vectors: VectorStore, embedder: LocalEmbedder,
                rng: random.Random) -> tuple[list[str], dict[str, float]]:
    """Create the users and insert MEMORIES memories; returns user ids and load timings."""
    users = [await store.create_user() for _ in range(USERS)]
    rows = [
        NewMemory(rng.choice(users), rng.choice(ROLES), _fact(rng), weight=1.0,
                  metadata={"source": "bench"})
        for _ in range(MEMORIES)
    ]
    start = time.perf_counter()
    embedded = await embedder.embed([row.text for row in rows])
    embed_s = time.perf_counter() - start
    start = time.perf_counter()
    now = datetime.now(UTC)
    for i in range(0, MEMORIES, BATCH):
        batch = rows[i : i + BATCH]
        await vectors.upsert([VectorItem(r.id, r.user_id, r.role_id, embedded[i + j])
                              for j, r in enumerate(batch)])
        await store.memories.insert(batch, now)
    await vectors.flush()
    insert_s = time.perf_counter() - start
    return users, {"embed_s": round(embed_s, 2), "insert_s": round(insert_s, 2)}


async def _measure(service: MemoryService, vectors: VectorStore, embedder: LocalEmbedder,
                   users: list[str], rng: random.Random) -> tuple[dict[str, list[float]], float]:
    """Latency samples per stage, and the mean number of memories a recall returned."""
    samples: dict[str, list[float]] = {"recall": [], "search": [], "embed": []}
    recalled = []
    for i in range(WARMUP + QUERIES):
        user, role, query = rng.choice(users), rng.choice(ROLES), _question(rng)
        (vector,) = await embedder.embed([query])
        recall_ms, texts = await _timed(service.recall(user, role, query))
        search_ms, _ = await _timed(vectors.search(vector, user, role, 5))
        embed_ms, _ = await _timed(embedder.embed([query]))
        if i >= WARMUP:
            for name, ms in (("recall", recall_ms), ("search", search_ms), ("embed", embed_ms)):
                samples[name].append(ms)
            recalled.append(len(texts))
    return samples, statistics.fmean(recalled)


def _plot(samples: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, values in samples.items():
        ordered = sorted(values)
        ax.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))],
                label=f"{name}  p50 {statistics.median(ordered):.1f} ms")
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("fraction of queries")
    ax.set_title(f"Memory recall with {MEMORIES:,} stored memories ({QUERIES} queries)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


async def _run(out_dir: Path) -> dict[str, Any]:
    rng = random.Random(SEED)
    work = Path(tempfile.mkdtemp(prefix="parley-bench-"))  # outside 0700 dirs: see pgserver
    settings = Settings(data_dir=str(work), database_url="", milvus_uri="", embed="local")
    embedder = LocalEmbedder()
    store = await Store.open(settings)
    try:
        await store.upsert_roles([{"id": role, "name": role} for role in ROLES])
        vectors = await VectorStore.open(settings, embedder.dim)
        service = MemoryService(store, vectors, embedder)
        try:
            users, load = await _fill(store, vectors, embedder, rng)
            samples, mean_recalled = await _measure(service, vectors, embedder, users, rng)
        finally:
            await service.close()
    finally:
        await store.close()
        await embedder.close()
        shutil.rmtree(work, ignore_errors=True)
    return _report(samples, mean_recalled, load, out_dir)


def _report(samples: dict[str, list[float]], mean_recalled: float, load: dict[str, float],
            out_dir: Path) -> dict[str, Any]:
    latency = {name: _summary(values) for name, values in samples.items()}
    result: dict[str, Any] = {
        "name": "memory",
        "memories": MEMORIES, "users": USERS, "roles": list(ROLES), "queries": QUERIES, "k": 5,
        "latency_ms": latency,
        "mean_recalled": round(mean_recalled, 2),
        "load": {**load, "memories_per_s": round(MEMORIES / (load["embed_s"] + load["insert_s"]))},
        "stack": {
            "postgres": "embedded (pgserver)", "vectors": "Milvus Lite (file)",
            "embedder": "all-MiniLM-L6-v2 int8 ONNX, 1 thread",
            "versions": {p: version(p) for p in ("onnxruntime", "pymilvus", "milvus-lite",
                                                  "asyncpg")},
            "cpus": os.cpu_count(), "python": platform.python_version(),
        },
    }
    recall = latency["recall"]
    result["summary"] = {"memories": MEMORIES, "recall_p50_ms": recall["p50"], "recall_p95_ms": recall["p95"]}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "memory.json").write_text(json.dumps(result, indent=2) + "\n")
    _plot(samples, out_dir / "memory.png")
    return result


def run(out_dir: Path) -> dict[str, Any]:
    """Run the benchmark; writes out_dir/memory.json and out_dir/memory.png."""
    return asyncio.run(_run(out_dir))


if __name__ == "__main__":
    print(json.dumps(run(REPO_ROOT / "bench" / "results")["latency_ms"], indent=2))
