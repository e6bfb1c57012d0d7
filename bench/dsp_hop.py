"""What the remote DSP hop costs: ``parley bench dsp_hop``.

``parley dsp-serve`` runs in its own process; this process plays N calls' worth of
microphone frames (one every 10 ms each, paced on the monotonic clock, as a call's reader
would) through :class:`RemoteDspChain`, then through the in-process :class:`DspChain`.
Measured: the round trip per frame (send to result), frames that missed their slot, the
media process's CPU per call with each chain, and the service's CPU per call (from
/proc/PID/stat). The machine is shared and noisy: compare the ratios within one run.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from parley.config import REPO_ROOT, Settings
from pipeline.audio import FRAME_10MS
from pipeline.dsp.chain import DspChain
from pipeline.dsp.remote.client import RemoteDspChain

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def _signal(seconds: float, seed: int) -> np.ndarray:
    """Speech-like level changes over noise (DSP cost barely depends on content)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 48000)
    envelope = np.repeat(rng.uniform(0.05, 1.0, n // 4800 + 1), 4800)[:n]
    return (rng.standard_normal(n) * 3000 * envelope).astype(np.int16)


async def _play(chains: list[Any], seconds: float) -> None:
    """Like a call's reader: every 20 ms (one Opus packet) two 10 ms frames back to back."""
    pcms = [_signal(seconds, i) for i in range(len(chains))]
    t0 = time.monotonic()
    for n in range(0, int(seconds * 100), 2):
        for chain, pcm in zip(chains, pcms, strict=True):
            for k in (n, n + 1):
                chain.process(pcm[k * FRAME_10MS:(k + 1) * FRAME_10MS], t0 + k * 0.01)
        await asyncio.sleep(max(0.0, t0 + (n + 2) * 0.01 - time.monotonic()))


async def _measure(calls: int, seconds: float, target: str, server_pid: int) -> dict[str, Any]:
    remote_settings = Settings(dsp_url=target, dsp_delay_frames=3)
    remotes = [RemoteDspChain(remote_settings, f"bench{i}") for i in range(calls)]
    await _play(remotes, 0.5)  # streams open, sessions exist
    for chain in remotes:
        chain.rtt_s.clear()
    late0 = sum(c.late_frames for c in remotes)
    cpu0, srv0, wall0 = time.process_time(), _proc_cpu_s(server_pid), time.monotonic()
    await _play(remotes, seconds)
    remote_cpu, server_cpu = time.process_time() - cpu0, _proc_cpu_s(server_pid) - srv0
    wall = time.monotonic() - wall0
    for chain in remotes:
        chain.close()
    rtts = np.array([r for chain in remotes for r in chain.rtt_s]) * 1000
    late = sum(c.late_frames for c in remotes) - late0
    local = [DspChain(Settings()) for _ in range(calls)]
    cpu0, wall0 = time.process_time(), time.monotonic()
    await _play(local, seconds)
    local_cpu, local_wall = time.process_time() - cpu0, time.monotonic() - wall0
    return {
        "calls": calls,
        "rtt_ms": {f"p{q}": round(float(np.percentile(rtts, q)), 2) for q in (50, 95, 99)},
        "late_frames_share": round(late / (calls * seconds * 100), 4),
        "media_cpu_core_per_call": {"remote": round(remote_cpu / wall / calls, 4),
                                    "in_process": round(local_cpu / local_wall / calls, 4)},
        "service_cpu_core_per_call": round(server_cpu / wall / calls, 4),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(out_dir: Path, quick: bool = False) -> dict[str, Any]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PARLEY_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([sys.executable, "-m", "parley.cli", "dsp-serve", "--host", "127.0.0.1",
                             "--port", str(port), "--metrics-port", "0"], cwd=REPO_ROOT, env=env)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
        seconds = 3.0 if quick else 10.0
        rows = [asyncio.run(_measure(n, seconds, f"127.0.0.1:{port}", proc.pid)) for n in (1, 4 if quick else 8)]
    finally:
        proc.terminate()
        proc.wait(15)
    result = {"what": "remote DSP over loopback gRPC: a stream per call, 20 ms a message, 3-frame slot",
              "cpus": os.cpu_count(), "runs": rows,
              "summary": {f"{r['calls']} calls": {"rtt_p50_ms": r["rtt_ms"]["p50"], "rtt_p95_ms": r["rtt_ms"]["p95"],
                                                  "late": r["late_frames_share"],
                                                  "media_cpu_remote": r["media_cpu_core_per_call"]["remote"],
                                                  "media_cpu_local": r["media_cpu_core_per_call"]["in_process"],
                                                  "service_cpu": r["service_cpu_core_per_call"]} for r in rows}}
    (out_dir / "dsp_hop.json").write_text(json.dumps(result, indent=1) + "\n")
    return result
