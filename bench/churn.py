"""Call churn: many short calls, some hung up cleanly and some whose client just vanishes.

A vanishing client is an aiortc peer whose UDP sockets are closed under it — no RTCP BYE,
no DTLS close_notify, no SCTP abort, no more consent responses: what the server sees when a
tab is killed or a laptop drops off the network. The server must notice (media liveness)
and close the call; afterwards live calls, threads and fds must be back at their baseline
and RSS must not have grown by more than 50 MB.

``parley bench churn`` runs 1 000 calls (a quarter vanishing) against a ``parley serve``
process and reads its /proc figures; ``tests/test_churn.py`` runs a smaller count in-process.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import re
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiortc import RTCSessionDescription

from parley.call.client import CallClient

logger = logging.getLogger(__name__)

SETTLE_S = 30.0
CLIENT_CLOSE_S = 10.0


def vanish(client: CallClient) -> None:
    """Close the client's ICE sockets: from now on it sends nothing and answers nothing.

    aiortc has no public way to lose the network, so this reaches the aioice connection
    behind the peer's (bundled) ICE transport; the client's own objects are closed later.
    """
    transports = {t.sender.transport.transport for t in client.pc.getTransceivers() if t.sender.transport}
    if client.pc.sctp is not None:
        transports.add(client.pc.sctp.transport.transport)
    for ice in transports:
        for protocol in list(ice._connection._protocols):
            protocol.transport.close()


async def one_call(url: str, abrupt: bool, hold_s: float, transport: str = "webrtc") -> str:
    """One call: ping, hold, then hang up or vanish; returns "clean" / "vanished" / "failed"."""
    try:
        if transport == "ws":
            await _ws_call(url, abrupt, hold_s)
        elif transport == "whip":
            await _whip_call(url, abrupt, hold_s)
        else:
            await _rtc_call(url, abrupt, hold_s)
    except (TimeoutError, OSError, RuntimeError, ValueError, aiohttp.ClientError) as exc:
        logger.warning("churn %s call failed: %s: %s", transport, type(exc).__name__, exc)
        return "failed"
    return "vanished" if abrupt else "clean"


async def _close(client: CallClient) -> None:
    """Close the client's side, bounded: aiortc's close can wait forever on a vanished transport."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.close(), CLIENT_CLOSE_S)


async def _rtc_call(url: str, abrupt: bool, hold_s: float) -> None:
    client = CallClient(url, "echo")
    try:
        await client.connect(timeout=20)
        client.send({"type": "ping", "t": 0})
        await client.wait_event(lambda e: e["type"] == "pong", timeout=10)
        await asyncio.sleep(hold_s)
        if abrupt:
            vanish(client)
    finally:
        await _close(client)


async def _whip_call(url: str, abrupt: bool, hold_s: float) -> None:
    """A WHIP publisher (RFC 9725): offer by POST, hang up by DELETE of the Location."""
    client = CallClient(url, "echo")  # its peer, mic and DataChannel; signalled by hand
    try:
        pc = client.pc
        pc.addTrack(client.mic)
        await pc.setLocalDescription(await pc.createOffer())
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
            async with http.post(f"{url}/whip?persona=echo", data=pc.localDescription.sdp,
                                 headers={"Content-Type": "application/sdp"}) as r:
                if r.status != 201:
                    raise RuntimeError(f"WHIP POST answered {r.status}")
                answer, location = await r.text(), r.headers["Location"]
            await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
            await client.wait_event(lambda e: e["type"] == "turn", timeout=15)
            await asyncio.sleep(hold_s)
            if abrupt:
                vanish(client)
                return
            async with http.delete(url + location) as r:
                if r.status != 204:
                    raise RuntimeError(f"WHIP DELETE answered {r.status}")
    finally:
        await _close(client)


async def _ws_call(url: str, abrupt: bool, hold_s: float) -> None:
    """A WebSocket call; a vanishing one stops reading, so it answers no heartbeat ping."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        ws = await http.ws_connect(f"{url}/ws?persona=echo", autoping=True)
        try:
            await ws.send_json({"type": "ping", "t": 0})
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT and json.loads(msg.data).get("type") == "pong":
                    break
            await asyncio.sleep(hold_s)
            if abrupt:  # silent: no frames, no pongs; the socket stays open until the server gives up
                await _wait_closed_by_server(ws)
        finally:
            await ws.close()


async def _wait_closed_by_server(ws: aiohttp.ClientWebSocketResponse, limit_s: float = 30.0) -> None:
    for _ in range(int(limit_s / 0.25)):
        if ws.closed or ws.exception() is not None:
            return
        await asyncio.sleep(0.25)


async def churn(url: str, calls: int, concurrency: int = 4, vanish_every: int = 4, hold_s: float = 0.2,
                progress: Callable[[int], Awaitable[None]] | None = None,
                transports: tuple[str, ...] = ("webrtc", "whip", "ws")) -> dict[str, int]:
    """Run ``calls`` calls, ``concurrency`` at a time, over ``transports`` in turn; every
    ``vanish_every``-th one vanishes (with 3 transports and 4, each transport gets its share)."""
    outcome: dict[str, int] = {"clean": 0, "vanished": 0, "failed": 0}
    queue = iter(range(calls))

    async def worker() -> None:
        for i in queue:
            transport = transports[i % len(transports)]
            outcome[await one_call(url, i % vanish_every == vanish_every - 1, hold_s, transport)] += 1
            if progress is not None:
                await progress(i)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcome


def thread_names(pid: int) -> collections.Counter[str]:
    """How many threads of process ``pid`` carry each name (``/proc``'s ``comm``)."""
    names: collections.Counter[str] = collections.Counter()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            names[(task / "comm").read_text().strip()] += 1
    return names


def fd_kinds(pid: int) -> collections.Counter[str]:
    """Open fds of process ``pid`` by kind: socket, pipe, anon_inode:[eventfd], or the file
    path with digits masked (so 'which fds did not come back' has an answer)."""
    kinds: collections.Counter[str] = collections.Counter()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            target = os.readlink(fd)
            kinds[target.split(":[")[0] if target.startswith(("socket:", "pipe:")) else
                  re.sub(r"\d+", "N", target)] += 1
    return kinds


def changed(before: collections.Counter[str], after: collections.Counter[str]) -> dict[str, int]:
    """Per name, how many more (or, negative, fewer) there are after than before."""
    return {name: after[name] - before[name] for name in sorted(set(before) | set(after))
            if after[name] != before[name]}


def proc_figures(pid: int) -> dict[str, float]:
    """fds, threads and RSS (MB) of process ``pid``."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {"fds": len(os.listdir(f"/proc/{pid}/fd")), "threads": int(fields["Threads"]),
            "rss_mb": int(fields["VmRSS"].split()[0]) / 1024}


def _health(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
        return dict(json.loads(r.read()))


async def _settle(url: str, pid: int, baseline: dict[str, float]) -> tuple[float, dict[str, Any]]:
    """Seconds until no call is live and fds/threads are back at baseline (≤ SETTLE_S)."""
    t0 = time.monotonic()
    while True:
        health, now = await asyncio.to_thread(_health, url), proc_figures(pid)
        back = health["calls"] == 0 and now["fds"] <= baseline["fds"] and now["threads"] <= baseline["threads"]
        if back or time.monotonic() - t0 > SETTLE_S:
            return time.monotonic() - t0, {"calls": health["calls"], **now}
        await asyncio.sleep(0.5)


def run(out_dir: Path, quick: bool = False) -> dict[str, Any]:
    """``parley bench churn``: 1 000 calls (100 with --quick), a quarter vanishing."""
    from bench.serverproc import parley_servers

    calls = 100 if quick else 1000
    # rate limits and load admission off: back-to-back call set-ups keep a core busy, so the
    # server would (rightly) answer 503/429 to most of them; this bench is about what calls
    # leave behind (tests/test_load.py and tests/test_floods.py cover admission)
    env = {"PARLEY_PERSONA": "echo", "PARLEY_RATE_LIMIT": "0", "PARLEY_USER_RATE_LIMIT": "0",
           "PARLEY_LOAD_LIMIT": "1000"}
    with parley_servers(1, env=env) as (url,):
        pid = int(_health(url)["pid"])
        result = asyncio.run(_run(url, pid, calls))
    (out_dir / "churn.json").write_text(json.dumps(result, indent=1))
    _plot(result, out_dir / "churn.png")
    return result


async def _run(url: str, pid: int, calls: int) -> dict[str, Any]:
    # warm-up at the run's concurrency: asyncio's default executor (aiortc encodes there) and
    # the Postgres pool grow to their bounds once; that is not per-call growth
    await churn(url, 8, vanish_every=1000)
    await _settle(url, pid, {"fds": 1e9, "threads": 1e9})
    baseline, names_before, fds_before = proc_figures(pid), thread_names(pid), fd_kinds(pid)
    samples: list[dict[str, float]] = []

    async def sample(i: int) -> None:
        if i % 10 == 0:
            samples.append({"call": i, **proc_figures(pid)})

    t0 = time.monotonic()
    outcome = await churn(url, calls, progress=sample)
    elapsed = time.monotonic() - t0
    settle_s, after = await _settle(url, pid, baseline)
    summary = {
        "calls": calls, **outcome, "seconds": round(elapsed, 1), "settle_s": round(settle_s, 1),
        "live_calls_after": after["calls"], "fds": [baseline["fds"], after["fds"]],
        "threads": [baseline["threads"], after["threads"]],
        "rss_mb": [round(baseline["rss_mb"], 1), round(after["rss_mb"], 1)],
        "rss_growth_mb": round(after["rss_mb"] - baseline["rss_mb"], 1),
        # which threads and fds differ from the baseline (pools that grew to their bound, or leaks)
        "threads_changed": changed(names_before, thread_names(pid)),
        "fds_changed": changed(fds_before, fd_kinds(pid)),
    }
    return {"summary": summary, "samples": samples}


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    fig, axes = plt.subplots(3, 1, figsize=(7, 7), sharex=True)
    for ax, key in zip(axes, ("fds", "threads", "rss_mb"), strict=True):
        ax.plot([s["call"] for s in samples], [s[key] for s in samples])
        ax.set_ylabel(key)
    axes[-1].set_xlabel("calls started")
    s = result["summary"]
    fig.suptitle(f"churn: {s['calls']} calls ({s['vanished']} vanished), RSS +{s['rss_growth_mb']} MB")
    fig.savefig(path, dpi=90)
    plt.close(fig)
