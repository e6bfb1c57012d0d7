"""Turn latency over real WebRTC against a served node on the local model stack.

Each turn is one ``parley call``-style client (a fresh call) saying a question made with
espeak-ng; the turn latency is measured at the client — end of speech sent → first voiced
reply frame received — and the server's per-stage durations come from its ``metrics``
event. The first turn of a fresh server pays one-off model warm-up and is reported apart.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench.serverproc import parley_servers
from parley.call.caller import run_call

QUESTIONS = (
    "What is the meaning of a good life?",
    "Is it better to be just or to be happy?",
    "What is courage?",
    "Can a person know anything for certain?",
    "Why do people fear death?",
    "What makes a friend a true friend?",
    "Should we always tell the truth?",
    "What is beauty?",
    "Is money good or bad?",
    "How should we treat our enemies?",
    "What is wisdom?",
    "Do we have free will?",
)
STAGES = ("stt", "llm_first_token", "tts_first_audio")
SERVER_STAGES = ("stt", "llm_first_token", "llm_first_piece", "tts_first_audio", "first_frame")


def _questions(directory: Path, count: int) -> list[Path]:
    paths = []
    for i in range(count):
        path = directory / f"q{i}.wav"
        subprocess.run(["espeak-ng", "-s", "165", "-w", str(path), QUESTIONS[i % len(QUESTIONS)]], check=True)
        paths.append(path)
    return paths


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


async def _turns(url: str, wavs: list[Path], persona: str) -> list[dict[str, Any]]:
    results = []
    for wav in wavs:
        r = await run_call(url, wav, persona, timeout=60, detail=True)
        results.append({"question": wav.name, "transcript": r["transcript"], "reply_text": r["reply_text"],
                        "latency_ms": r["latency_ms"], "server_ms": r["server_ms"], "frames": r["frames"]})
        print(f"   turn {len(results)}: {r['latency_ms']}", flush=True)
    return results


def run(out_dir: Path, quick: bool = False, persona: str = "socrates") -> dict[str, Any]:
    count = 4 if quick else 12
    with tempfile.TemporaryDirectory() as tmp, parley_servers(1, {"PARLEY_PERSONA": persona}) as urls:
        wavs = _questions(Path(tmp), count + 1)
        turns = asyncio.run(_turns(urls[0], wavs, persona))
    warmup, measured = turns[0], [t for t in turns[1:] if t["latency_ms"]["turn"] is not None]
    turn_ms = [t["latency_ms"]["turn"] for t in measured]
    summary: dict[str, Any] = {
        "turns": len(measured),
        "turn_p50_ms": _pct(turn_ms, 0.5) if turn_ms else None,
        "turn_p95_ms": _pct(turn_ms, 0.95) if turn_ms else None,
        "warmup_turn_ms": warmup["latency_ms"]["turn"],
    }
    for stage in SERVER_STAGES:
        values = [t["server_ms"][stage] for t in measured if t["server_ms"].get(stage) is not None]
        summary[f"{stage}_p50_ms"] = round(statistics.median(values), 1) if values else None
    # the rest of the turn: end-of-turn wait before the server's clock starts, plus the
    # network and the client's jitter buffer after the first frame leaves
    summary["eot_wait_and_network_p50_ms"] = round(
        statistics.median(t["latency_ms"]["turn"] - t["server_ms"].get("first_frame", 0) for t in measured), 1
    ) if measured else None
    result = {"persona": persona, "summary": summary, "turns": turns}
    (out_dir / "latency.json").write_text(json.dumps(result, indent=1))
    _plot(measured, summary, out_dir / "latency.png")
    return result


def _plot(turns: list[dict[str, Any]], summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot([t["latency_ms"]["turn"] for t in turns], marker="o")
    left.axhline(summary["turn_p50_ms"] or 0, linestyle="--", label=f"p50 {summary['turn_p50_ms']} ms")
    left.set_xlabel("turn")
    left.set_ylabel("client-measured turn latency (ms)")
    left.legend()
    right.boxplot([[t["server_ms"].get(s) or 0 for t in turns] for s in SERVER_STAGES],
                  tick_labels=[s.replace("_", "\n") for s in SERVER_STAGES])
    right.set_ylabel("server stage duration (ms)")
    fig.suptitle("Parley turn latency, local models, 2-core CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
