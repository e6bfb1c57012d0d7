"""How many full-duplex ``echo`` calls one server process sustains, and what scales it.

Calls are ramped in steps; in each step every call talks continuously (a sentence, then
the echo of it, over and over) and the step is judged by the server's late-frame ratio —
outbound 20 ms frames sent more than a frame behind schedule, i.e. a stalling media loop.
The capacity is the last step with ≤ 0.5 % late frames. Configurations: RNNoise's float
path vs the int8 kernel, asyncio vs uvloop in one process, and one process per core
(separate ports, clients spread round-robin — what SO_REUSEPORT does with ``--workers``).
The client peers run in their own processes on the same 2-core machine, so they compete
with the server for CPU: the figures are a lower bound for a dedicated server.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.serverproc import parley_servers, scrape

LATE_LIMIT = 0.005
STEP_S = 12.0
CLIENT_PROCS = 2
COUNTERS = ("parley_frames_sent_total", "parley_frames_late_total")


def _speech() -> np.ndarray:
    """A speech-like test signal: syllable-rate modulated harmonics, 1.5 s, then 1 s silence."""
    t = np.arange(int(1.5 * 48000)) / 48000
    voice = sum(np.sin(2 * np.pi * f * t) / (i + 1) for i, f in enumerate((140, 280, 420, 700, 1100)))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t)) ** 2 / 4
    pcm = (voice * envelope * 6000).astype(np.int16)
    return np.concatenate((pcm, np.zeros(48000, np.int16)))


async def _talk(url: str, seconds: float) -> tuple[int, int]:
    from media_server.client import CallClient

    speech = _speech()
    async with CallClient(url, "echo") as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await client.say(speech).done
            await asyncio.sleep(min(2.0, max(0.0, end - time.monotonic())))
        return client.frames_received, client.frames_late


async def _client_main(urls: list[str], calls: int, seconds: float) -> tuple[int, int, int]:
    results = await asyncio.gather(
        *(_talk(urls[i % len(urls)], seconds) for i in range(calls)), return_exceptions=True
    )
    ok = [r for r in results if isinstance(r, tuple)]
    return sum(r[0] for r in ok), sum(r[1] for r in ok), len(results) - len(ok)


def _client_proc(urls: list[str], calls: int, seconds: float, queue: Any) -> None:
    queue.put(asyncio.run(_client_main(urls, calls, seconds)))


def _step(urls: list[str], calls: int) -> dict[str, Any]:
    before = [scrape(u, COUNTERS) for u in urls]
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    shares = [calls // CLIENT_PROCS + (i < calls % CLIENT_PROCS) for i in range(CLIENT_PROCS)]
    procs = [ctx.Process(target=_client_proc, args=(urls, n, STEP_S, queue)) for n in shares if n]
    for p in procs:
        p.start()
    client = [queue.get(timeout=STEP_S + 120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    after = [scrape(u, COUNTERS) for u in urls]
    sent = sum(a[COUNTERS[0]] - b[COUNTERS[0]] for a, b in zip(after, before, strict=True))
    late = sum(a[COUNTERS[1]] - b[COUNTERS[1]] for a, b in zip(after, before, strict=True))
    received = sum(c[0] for c in client)
    return {
        "calls": calls,
        "server_late_ratio": late / sent if sent else 1.0,
        "client_late_ratio": sum(c[1] for c in client) / received if received else 1.0,
        "failed_calls": sum(c[2] for c in client),
    }


def _ramp(workers: int, uvloop: bool, kernel: str, steps: list[int]) -> dict[str, Any]:
    env = {
        "PARLEY_PERSONA": "echo",
        "PARLEY_UVLOOP": "1" if uvloop else "0",
        "PARLEY_MAX_CALLS": "500",
        "PARLEY_RNNOISE_KERNEL": kernel,
    }
    name = f"workers={workers} uvloop={uvloop} rnnoise={kernel}"
    points, capacity = [], 0
    with parley_servers(workers, env) as urls:
        for calls in steps:
            point = _step(urls, calls)
            points.append(point)
            print(f"   {name} calls={calls}: server late {point['server_late_ratio']:.2%}, "
                  f"client late {point['client_late_ratio']:.2%}", flush=True)
            if point["server_late_ratio"] > LATE_LIMIT or point["failed_calls"]:
                break
            capacity = calls
    return {"name": name, "workers": workers, "uvloop": uvloop, "rnnoise": kernel, "capacity": capacity,
            "points": points}


def run(out_dir: Path, quick: bool = False) -> dict[str, Any]:
    steps = [2, 4] if quick else [2, 4, 6, 8, 10, 12, 16, 20, 24, 28, 32, 40, 48]
    cores = os.cpu_count() or 1
    # RNNoise's float path first: what the int8 kernel buys, in calls
    configs = [(1, True, "float"), (1, False, "int8"), (1, True, "int8")]
    configs += [] if quick else [(cores, True, "int8")]
    runs = [_ramp(workers, uvloop, kernel, steps) for workers, uvloop, kernel in configs]
    result = {
        "late_limit": LATE_LIMIT,
        "step_seconds": STEP_S,
        "machine_cores": cores,
        "runs": runs,
        "summary": {r["name"]: r["capacity"] for r in runs},
    }
    (out_dir / "capacity.json").write_text(json.dumps(result, indent=1))
    _plot(runs, out_dir / "capacity.png")
    return result


def _plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in runs:
        xs = [p["calls"] for p in r["points"]]
        ys = [100 * p["server_late_ratio"] for p in r["points"]]
        ax.plot(xs, ys, marker="o", label=f"{r['workers']} worker(s), uvloop={r['uvloop']}, rnnoise {r['rnnoise']}")
    ax.axhline(100 * LATE_LIMIT, color="red", linestyle="--", label="0.5 % limit")
    ax.set_xlabel("concurrent echo calls")
    ax.set_ylabel("late outbound frames (%)")
    ax.set_title("Parley capacity (clients on the same 2-core machine)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
