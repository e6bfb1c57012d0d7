"""How many full-duplex ``echo`` calls Parley holds, and what one costs against bare aiortc.

Two figures, both measured in one run so a busy or slow machine distorts them alike:

- **server CPU per call**, read from ``/proc`` for the server's whole process tree (so it does
  not depend on how much CPU the clients take), over a steady window after the calls set up —
  for Parley (DSP on) and for the thinnest aiortc relay (``bench/relay.py``) at the same call
  count, three pairs in turn; their median ratio is the figure that travels between machines;
- **send-path CPU per 20 ms frame** in one process: aiortc encoding a frame (pure-Python
  audio level + Opus encode through its executor) vs packing the agent track's pre-encoded
  packet (``media_server/encoded.py``), for speech and for silence;
- **capacity**: calls are added in steps until the server sends more than 0.5 % of its
  outbound frames late (the media loop no longer keeps up), for 1 worker and for 2 workers
  (``parley serve --workers 2``: one port, the supervisor, routing on an embedded Redis) --
  and again with every worker capped at ``WORKER_CAP`` of a core (:mod:`bench.cpucap`), so
  that the workers and not the 2-core machine are the limit: does a second worker double it?

The callers are cheap (``bench/loadgen.py``: pre-encoded Opus replayed, WHIP) and run in a
separate process on the same machine, so they still compete with the server for cores: the
capacities are lower bounds for a dedicated server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import cpucap
from bench.serverproc import free_port, scrape, wait_healthy

LATE_LIMIT = 0.005
WORKER_CAP = 0.25  # cores per worker in the capped scaling run
RATIO_PAIRS = 3  # relay/Parley pairs measured in turn; the median pair is reported
COUNTERS = ("parley_frames_sent_total", "parley_frames_late_total")
TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of ``root`` and every process descending from it (``/proc``)."""
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)
        cpu[pid] = (int(fields[11]) + int(fields[12])) / TICKS
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo.extend(children.get(pid, []))
    return total


@dataclass
class Server:
    """A server under test: its public URL, its process, and where its metrics are."""

    url: str
    proc: subprocess.Popen[bytes]
    metrics_urls: list[str] = field(default_factory=list)
    worker_pids: list[int] = field(default_factory=list)

    def counters(self) -> dict[str, float]:
        out = dict.fromkeys(COUNTERS, 0.0)
        for url in self.metrics_urls:
            for name, value in scrape(url, COUNTERS, timeout=30.0).items():
                out[name] += value
        return out


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def relay_server() -> Iterator[Server]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.relay", "--port", str(port), "--uvloop"])
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, timeout=60)
        yield Server(url, proc)
    finally:
        _stop(proc)


def _workers(url: str, workers: int) -> dict[str, str]:
    """Each worker's id (``node:pid``) and internal URL, from ``/ready`` on fresh connections
    (SO_REUSEPORT spreads them)."""
    seen: dict[str, str] = {}
    deadline = time.monotonic() + 180
    while len(seen) < workers and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/ready", timeout=2) as r:
                body = json.loads(r.read())
            if body.get("url"):
                seen[body["worker"]] = body["url"]
        except OSError:
            time.sleep(0.3)
    if len(seen) < workers:
        raise RuntimeError(f"only {len(seen)} of {workers} workers answered at {url}")
    return seen


@contextlib.contextmanager
def parley_server(workers: int) -> Iterator[Server]:
    port = free_port()
    data = tempfile.mkdtemp(prefix="parley-bench-")
    env = {**os.environ, "PARLEY_LOG_LEVEL": "WARNING", "PARLEY_DATA_DIR": data, "PARLEY_PERSONA": "echo",
           "PARLEY_LOAD_LIMIT": "1000", "PARLEY_MAX_CALLS": "500", "PARLEY_DRAIN_S": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "parley", "serve", "--workers", str(workers), "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, timeout=180)
        found = _workers(url, workers)
        yield Server(url, proc, list(found.values()), [int(w.rsplit(":", 1)[1]) for w in found])
    finally:
        _stop(proc)
        subprocess.run(["rm", "-rf", data], check=False)


def client_process(url: str, calls: int, queue: Any, stop: Any) -> None:
    """A separate process of ``calls`` load-generator callers: says when they are up, stops on ``stop``."""
    from bench.loadgen import run_calls

    async def main() -> list[Any]:
        stats = await run_calls(url, calls, lambda n: queue.put(("ready", n)), lambda: asyncio.to_thread(stop.wait))
        return [(s.received, s.late, s.failed) for s in stats]

    queue.put(("stats", asyncio.run(main())))


def measure(server: Server, calls: int, window_s: float) -> dict[str, Any]:
    """``calls`` callers; server CPU and late frames over ``window_s`` once all calls are up."""
    ctx = multiprocessing.get_context("spawn")
    queue, stop = ctx.Queue(), ctx.Event()
    client = ctx.Process(target=client_process, args=(server.url, calls, queue, stop))
    client.start()
    try:
        kind, _ = queue.get(timeout=120 + calls)
        assert kind == "ready"
        cpu0, wall0, c0 = tree_cpu_seconds(server.proc.pid), time.monotonic(), server.counters()
        workers0 = [tree_cpu_seconds(pid) for pid in server.worker_pids]
        time.sleep(window_s)
        cpu1, wall1, c1 = tree_cpu_seconds(server.proc.pid), time.monotonic(), server.counters()
        workers1 = [tree_cpu_seconds(pid) for pid in server.worker_pids]
    finally:
        stop.set()
    kind, stats = queue.get(timeout=120)
    client.join(timeout=30)
    sent = c1[COUNTERS[0]] - c0[COUNTERS[0]]
    late = c1[COUNTERS[1]] - c0[COUNTERS[1]]
    received = sum(s[0] for s in stats)
    cores = (cpu1 - cpu0) / (wall1 - wall0)
    return {
        "calls": calls,
        "server_cores": round(cores, 3),
        "server_cpu_per_call": round(cores / calls, 4),
        "worker_cores": [round((b - a) / (wall1 - wall0), 3) for a, b in zip(workers0, workers1, strict=True)],
        "server_frames_per_call_s": round(sent / calls / (wall1 - wall0), 1) if server.metrics_urls else None,
        "server_late_ratio": late / sent if sent else (0.0 if not server.metrics_urls else 1.0),
        "client_late_ratio": sum(s[1] for s in stats) / received if received else 1.0,
        "failed_calls": sum(1 for s in stats if s[2]),
    }


def sender_cost(frames: int = 1500) -> dict[str, float]:
    """CPU per 20 ms frame of the send path, in one process: aiortc encoding a frame (audio level
    in Python + Opus encode through the executor) vs packing the agent track's own packet."""
    import av
    import numpy as np
    from aiortc import rtp
    from aiortc.codecs import get_encoder
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    from media_server.agent_track import TIME_BASE
    from media_server.encoded import OpusPackets

    codec = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)
    speech = [(np.sin(np.arange(960) * (0.05 + i % 7 * 0.01)) * 8000).astype(np.int16) for i in range(frames)]
    silence = [np.zeros(960, np.int16)] * frames

    def frame(pcm: np.ndarray, i: int) -> av.AudioFrame:
        f = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        f.sample_rate, f.pts, f.time_base = 48000, i * 960, TIME_BASE
        return f

    async def frame_path(pcms: list[np.ndarray]) -> float:
        encoder, loop = get_encoder(codec), asyncio.get_running_loop()
        t0 = time.process_time()
        for i, pcm in enumerate(pcms):
            f = frame(pcm, i)
            rtp.compute_audio_level_dbov(f)
            await loop.run_in_executor(None, encoder.encode, f, False)
        return (time.process_time() - t0) / frames * 1e6

    def packet_path(pcms: list[np.ndarray], silent: bool) -> float:
        encoder, packets = get_encoder(codec), OpusPackets()
        t0 = time.process_time()
        for i, pcm in enumerate(pcms):
            encoder.pack(packets.packet(pcm, i * 960, silent=silent))
        return (time.process_time() - t0) / frames * 1e6

    return {
        "speech_frame_path_us": round(asyncio.run(frame_path(speech)), 1),
        "speech_packet_path_us": round(packet_path(speech, False), 1),
        "silence_frame_path_us": round(asyncio.run(frame_path(silence)), 1),
        "silence_packet_path_us": round(packet_path(silence, True), 1),
    }


def _ramp(workers: int, steps: list[int], window_s: float, cap: float | None = None) -> dict[str, Any]:
    """Add calls step by step until one step sends too many frames late (or a call fails);
    with ``cap``, each worker gets only that fraction of a core (:mod:`bench.cpucap`)."""
    points, capacity = [], 0
    with parley_server(workers) as server, \
            cpucap.capped(server.worker_pids, cap, "parley-bench") if cap else contextlib.nullcontext():
        for calls in steps:
            point = measure(server, calls, window_s)
            points.append(point)
            print(f"   {workers} worker(s){f' capped at {cap} core' if cap else ''}, {calls} calls: "
                  f"late {point['server_late_ratio']:.2%}, {point['server_cpu_per_call']:.3f} core/call, "
                  f"workers at {point['worker_cores']} core, failed {point['failed_calls']}", flush=True)
            if point["server_late_ratio"] > LATE_LIMIT or point["failed_calls"]:
                break
            capacity = calls
    return {"workers": workers, "cap_cores": cap, "capacity": capacity, "points": points}


def _capped_scaling(window_s: float, quick: bool) -> dict[str, Any]:
    """1 and 2 workers each held to ``WORKER_CAP`` of a core: does the second double capacity?"""
    why_not = cpucap.available()
    if why_not is not None:
        return {"skipped": why_not}
    steps = [2, 4, 6] if quick else list(range(2, 25, 2))
    runs = [_ramp(1, steps, window_s, WORKER_CAP), _ramp(2, [2 * s for s in steps], window_s, WORKER_CAP)]
    one, two = runs[0]["capacity"], runs[1]["capacity"]
    return {"cap_cores": WORKER_CAP, "runs": runs, "scaling": round(two / one, 2) if one else None}


def _cpu_pair(calls: int, window_s: float) -> tuple[dict[str, Any], dict[str, Any], float | None]:
    """The relay, then Parley, with the same calls: (relay point, Parley point, CPU ratio)."""
    with relay_server() as relay:
        reference = measure(relay, calls, window_s)
    with parley_server(1) as parley:
        same = measure(parley, calls, window_s)
    ratio = same["server_cpu_per_call"] / reference["server_cpu_per_call"] if reference["server_cpu_per_call"] else None
    print(f"   CPU per call: relay {reference['server_cpu_per_call']:.3f}, parley {same['server_cpu_per_call']:.3f} "
          f"(ratio {ratio:.2f})", flush=True)
    return reference, same, ratio


def run(out_dir: Path, quick: bool = False) -> dict[str, Any]:
    sender = sender_cost()
    print(f"   send path per frame: {sender}", flush=True)
    window = 5.0 if quick else 10.0
    ref_calls = 4 if quick else 8
    pairs = [_cpu_pair(ref_calls, window) for _ in range(1 if quick else RATIO_PAIRS)]
    reference, same, ratio = sorted(pairs, key=lambda pair: pair[2] or 0.0)[len(pairs) // 2]  # the median pair
    steps = [4, 8] if quick else [4, 8, 12, 16, 20, 24, 28, 32, 40, 48]
    runs = [_ramp(1, steps, window), _ramp(2, [2 * s for s in steps], window)]
    capped = _capped_scaling(window, quick)
    result = {
        "late_limit": LATE_LIMIT,
        "window_seconds": window,
        "machine_cores": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "sender_cpu_per_frame": sender,
        "reference_relay": reference,
        "parley_same_calls": same,
        "cpu_ratio_pairs": [round(r, 3) if r else None for _, _, r in pairs],
        "runs": runs,
        "capped": capped,
        "summary": {
            "cpu_per_call_relay": reference["server_cpu_per_call"],
            "cpu_per_call_parley": same["server_cpu_per_call"],
            "cpu_ratio_parley_to_relay": round(ratio, 3) if ratio else None,
            "capacity_1_worker": runs[0]["capacity"],
            "capacity_2_workers": runs[1]["capacity"],
            "capped_scaling_2_to_1_worker": capped.get("scaling"),
            # a starved server sends fewer than 50 frames per call per second and looks cheap:
            # the CPU ratio means something only when Parley kept up at the reference call count
            "parley_kept_up": (same["server_frames_per_call_s"] or 0) >= 45,
        },
    }
    (out_dir / "capacity.json").write_text(json.dumps(result, indent=1))
    _plot(result, out_dir / "capacity.png")
    return result


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [2, 1]})
    for r in result["runs"] + result["capped"].get("runs", []):
        xs = [p["calls"] for p in r["points"]]
        capped = f" capped at {r['cap_cores']} core" if r["cap_cores"] else ""
        left.plot(xs, [100 * p["server_late_ratio"] for p in r["points"]], marker="o",
                  linestyle="--" if capped else "-", label=f"{r['workers']} worker(s){capped}: {r['capacity']} calls")
    left.axhline(100 * LATE_LIMIT, color="red", linestyle="--", label="0.5 % limit")
    left.set_xlabel("concurrent echo calls (DSP on)")
    left.set_ylabel("late outbound frames (%)")
    left.set_title("Capacity (clients on the same machine)")
    left.legend()
    s = result["summary"]
    right.bar(["aiortc relay", "parley echo"], [s["cpu_per_call_relay"], s["cpu_per_call_parley"]],
              color=["grey", "tab:blue"])
    right.set_ylabel("server CPU per call (cores)")
    right.set_title(f"Same run, {result['reference_relay']['calls']} calls: ratio {s['cpu_ratio_parley_to_relay']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
