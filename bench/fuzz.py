"""Input fuzzing: generated bad requests on every input path must never cost a 5xx or a call.

Paths covered: ``POST /api/sessions``, ``POST /api/offer``, ``POST /whip`` (SDP mutated from a
corpus of real offers — see :mod:`bench.sdp_corpus` — in any charset or as raw bytes),
``DELETE /whip/…``, the user-data routes, odd paths and headers, WebSocket frames on ``/ws``
and events on a real call's DataChannel. Every case is generated from a seeded RNG, so a
failing case can be replayed.

``parley bench fuzz`` runs ≥ 10 000 cases against a ``parley serve`` process and reports status
counts per path, 5xx count, ERROR lines in the server's log, that a real call works right
after, and fds/RSS before, after and 30 s later (JSON + PNG). ``tests/test_fuzz.py`` runs a
few hundred cases in-process.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.churn import changed, fd_kinds, proc_figures, thread_names
from bench.sdp_corpus import corpus, mutate
from parley.call.client import CallClient

CHARSETS = ("utf-8", "UTF-8", "ascii", "latin-1", "utf-16", "nonsense", "", "utf-8; x=y", "\u00e9", "cp1252")
CONTENT_TYPES = ("application/json", "application/sdp", "text/plain", "", "multipart/form-data",
                 "application/x-www-form-urlencoded", "application/json;;", "*/*")
JUNK_IDS = ("", "0", "..", "%00", "x" * 300, "00000000-0000-0000-0000-000000000000", "é", "1;DROP TABLE users",
            "ffffffffffffffffffffffffffffffff", "%2e%2e%2fsecret.key", "-1")
EVENT_TYPES = ("ping", "text", "interrupt", "settings", "audio-chunk", "audio-end", "", "warp", None, 5)


def junk_value(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value, sometimes nested, sometimes huge."""
    kind = rng.randrange(10 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 2**63, 1e308, -0.0, 0.5, 48000, 12345])
    if kind in (3, 4):
        return rng.choice(["", "echo", "socrates", "x" * rng.randrange(1, 3000), "\u0000", "\ud7ff\ufffd", "é" * 10])
    if kind == 5:
        return "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(1, 40)))
    if kind in (6, 7):
        return [junk_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    return {rng.choice(["type", "sdp", "persona", "text", "t", "x"]): junk_value(rng, depth + 1)
            for _ in range(rng.randrange(0, 4))}


def junk_event(rng: random.Random) -> str:
    """A client event, malformed in some way (or occasionally well-formed)."""
    roll = rng.random()
    if roll < 0.1:
        return rng.choice(["not json", "{", "[1,2]", "null", "1e999", '"str"', "{" * 5000 + "}" * 5000, ""])
    message: dict[str, Any] = {"type": rng.choice(EVENT_TYPES)}
    for key in rng.sample(["text", "t", "persona", "emotion", "plot_node", "seq", "data", "rate"], rng.randrange(0, 4)):
        message[key] = junk_value(rng)
    if roll < 0.2 and message["type"] == "audio-chunk":
        message["data"] = "AAAA" * rng.randrange(0, 8000)
    return json.dumps(message)


@dataclass(slots=True)
class HttpCase:
    path_kind: str
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None


def _content_type(rng: random.Random, base: str) -> dict[str, str]:
    if rng.random() < 0.6:
        ctype = base
    else:
        ctype = rng.choice(CONTENT_TYPES)
    if rng.random() < 0.4:
        ctype += f"; charset={rng.choice(CHARSETS)}"
    return {"Content-Type": ctype} if ctype else {}


def _auth(rng: random.Random, token: str) -> dict[str, str]:
    roll = rng.random()
    if roll < 0.6:
        return {}
    if roll < 0.75:
        return {"Authorization": f"Bearer {token}"}
    return {"Authorization": rng.choice(["Bearer", "Bearer ", "Basic x", "Bearer " + "a" * 5000, "Bearer a.b.c",
                                         f"Bearer {token[:-3]}xyz", "\u00e9"])}


def _encode(text: str, rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.7:
        return text.encode("utf-8", "surrogatepass")
    if roll < 0.85:
        return text.encode(rng.choice(["utf-16", "latin-1", "cp1252"]), "replace")
    raw = bytearray(text.encode("utf-8", "surrogatepass"))
    for _ in range(rng.randint(1, 5)):
        if raw:
            raw[rng.randrange(len(raw))] = rng.randrange(256)
    return bytes(raw)


def http_case(rng: random.Random, offers: list[str], token: str) -> HttpCase:
    """One generated HTTP request."""
    kind = rng.choice(["sessions", "offer", "offer", "whip", "whip", "misc"])
    if kind == "sessions":
        request = {"persona": junk_value(rng)}
        if rng.random() < 0.3:  # a resume, of a session the token may or may not hold
            request["session_id"] = junk_value(rng)
        body = json.dumps(junk_value(rng) if rng.random() < 0.5 else request)
        return HttpCase(kind, "POST", "/api/sessions", {**_content_type(rng, "application/json"), **_auth(rng, token)},
                        _encode(body, rng))
    sdp = mutate(rng.choice(offers), rng)
    if kind == "offer":
        fields: dict[str, Any] = {"sdp": sdp if rng.random() < 0.85 else junk_value(rng),
                                  "type": "offer" if rng.random() < 0.85 else junk_value(rng)}
        for key in ("persona", "session_id"):
            if rng.random() < 0.2:
                fields[key] = junk_value(rng)
        return HttpCase(kind, "POST", "/api/offer", {**_content_type(rng, "application/json"), **_auth(rng, token)},
                        _encode(json.dumps(fields), rng))
    if kind == "whip":
        query = f"?persona={rng.choice(JUNK_IDS)}" if rng.random() < 0.2 else ""
        return HttpCase(kind, "POST", "/whip" + query, {**_content_type(rng, "application/sdp"), **_auth(rng, token)},
                        _encode(sdp, rng))
    method, path = rng.choice([("DELETE", "/whip/{}"), ("POST", "/api/sessions/{}/memories"),
                               ("GET", "/api/users/{}/export"), ("DELETE", "/api/users/{}"), ("GET", "/{}"),
                               ("GET", "/ws?persona={}"), ("GET", "/ws?token={}"), ("PUT", "/api/offer"),
                               ("DELETE", "/api/users/{}/memories/{}")])
    path = path.replace("{}", rng.choice(JUNK_IDS))
    payload = _encode(json.dumps({"text": junk_value(rng)}), rng) if method == "POST" else None
    return HttpCase("misc", method, path, {**_content_type(rng, "application/json"), **_auth(rng, token)}, payload)


@dataclass
class Report:
    statuses: dict[str, collections.Counter[int]] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter))
    server_5xx: list[str] = field(default_factory=list)
    ws_cases: int = 0
    dc_cases: int = 0
    ws_closed_by_server: int = 0

    @property
    def http_cases(self) -> int:
        return sum(sum(c.values()) for c in self.statuses.values())


async def run_http(url: str, n: int, rng: random.Random, offers: list[str], token: str, report: Report,
                   concurrency: int = 4) -> None:
    cases = [http_case(rng, offers, token) for _ in range(n)]
    queue = iter(cases)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout, skip_auto_headers=("Content-Type",)) as http:

        async def worker() -> None:
            for case in queue:
                async with http.request(case.method, url + case.path, headers=case.headers, data=case.body) as r:
                    await r.read()
                    report.statuses[case.path_kind][r.status] += 1
                    if r.status >= 500:
                        report.server_5xx.append(f"{r.status} {case.method} {case.path} {case.headers}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def run_ws(url: str, n: int, rng: random.Random, report: Report) -> None:
    """Malformed frames on /ws; a server may close a socket (e.g. 1009 too big) but not fail."""
    sent = 0
    async with aiohttp.ClientSession() as http:
        while sent < n:
            async with http.ws_connect(f"{url}/ws?persona=echo", max_msg_size=0) as ws:
                for _ in range(min(200, n - sent)):
                    if rng.random() < 0.05:
                        await ws.send_bytes(rng.randbytes(rng.randrange(1, 64)))
                    else:
                        await ws.send_str(junk_event(rng))
                    sent += 1
                    if ws.closed:
                        report.ws_closed_by_server += 1
                        break
                await ws.send_json({"type": "ping", "t": "end"})
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT or json.loads(msg.data).get("t") == "end":
                        break
    report.ws_cases += sent


async def run_datachannel(url: str, n: int, rng: random.Random, report: Report) -> None:
    """Malformed events on a real call's DataChannel; the call must still answer a ping."""
    await no_calls_left(url)
    async with CallClient(url, "echo") as client:
        for i in range(n):
            client.channel.send(junk_event(rng))
            if i % 50 == 49:
                await asyncio.sleep(0)  # let the SCTP transport drain
        client.send({"type": "ping", "t": "dc-end"})
        await client.wait_event(lambda e: e.get("type") == "pong" and e.get("t") == "dc-end", timeout=20)
    report.dc_cases += n


async def no_calls_left(url: str, limit_s: float = 30.0) -> bool:
    """Wait (bounded) until the server holds no call: fuzzed offers it answered time out."""
    async with aiohttp.ClientSession() as http:
        for _ in range(int(limit_s / 0.25)):
            async with http.get(f"{url}/health") as r:
                if (await r.json())["calls"] == 0:
                    return True
            await asyncio.sleep(0.25)
    return False


async def real_call_works(url: str) -> bool:
    """A real call (after the answered-but-never-connected fuzz offers have been reaped)."""
    await no_calls_left(url)
    async with CallClient(url, "echo") as client:
        client.send({"type": "ping", "t": "after"})
        event = await client.wait_event(lambda e: e["type"] == "pong", timeout=15)
        return bool(event["t"] == "after")


async def fuzz(url: str, cases: int, seed: int = 16) -> Report:
    """Run ``cases`` generated cases: ~80 % HTTP, 10 % WebSocket frames, 10 % DataChannel events."""
    rng = random.Random(seed)
    offers = list((await corpus()).values())
    async with aiohttp.ClientSession() as http, http.post(f"{url}/api/sessions", json={"persona": "echo"}) as r:
        token = (await r.json())["token"]
    report = Report()
    ws_n = dc_n = cases // 10
    await run_http(url, cases - ws_n - dc_n, rng, offers, token, report)
    await run_ws(url, ws_n, rng, report)
    await run_datachannel(url, dc_n, rng, report)
    return report


# -- the bench: a real server process, its log, its /proc figures --------------------------------
def _start_server(log_path: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    from bench.serverproc import free_port, wait_healthy

    port, data = free_port(), tempfile.mkdtemp(prefix="parley-fuzz-")
    # rate limits and load admission off: the fuzzer's burst of valid offers would otherwise
    # (rightly) get 429/503, and this bench measures how bad input is answered, not floods
    # (tests/test_floods.py and tests/test_load.py do)
    env = {**os.environ, "PARLEY_DATA_DIR": data, "PARLEY_PERSONA": "echo", "PARLEY_LOG_LEVEL": "INFO",
           "PARLEY_RATE_LIMIT": "0", "PARLEY_USER_RATE_LIMIT": "0", "PARLEY_LOAD_LIMIT": "1000"}
    log = log_path.open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "parley", "serve", "--port", str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url)
    return proc, url, data


def run(out_dir: Path, quick: bool = False, cases: int | None = None) -> dict[str, Any]:
    """``parley bench fuzz``: 10 000 cases (1 000 with --quick)."""
    import shutil

    n = cases or (1000 if quick else 10_000)
    log_path = out_dir / "fuzz-server.log"
    proc, url, data = _start_server(log_path)
    try:
        pid = proc.pid
        # warm-up at the run's concurrency, so the baseline includes what grows once to a
        # bound (the Postgres pool, asyncio's default executor, caches), not per request
        asyncio.run(fuzz(url, 300, seed=1))
        asyncio.run(real_call_works(url))
        time.sleep(2)
        before, fds_before, threads_before = proc_figures(pid), fd_kinds(pid), thread_names(pid)
        t0 = time.monotonic()
        report = asyncio.run(fuzz(url, n))
        elapsed = time.monotonic() - t0
        right_after = proc_figures(pid)
        call_ok = asyncio.run(real_call_works(url))
        settled, back_s = _wait_baseline(pid, before)
        differences = {"fds_changed": changed(fds_before, fd_kinds(pid)),
                       "threads_changed": changed(threads_before, thread_names(pid))}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(data, ignore_errors=True)
    errors = [line for line in log_path.read_text(errors="replace").splitlines()
              if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback")]
    result = _result(report, n, elapsed, call_ok, before, right_after, settled, back_s, errors)
    result["summary"].update(differences)
    (out_dir / "fuzz.json").write_text(json.dumps(result, indent=1))
    _plot(result, out_dir / "fuzz.png")
    return result


def _wait_baseline(pid: int, before: dict[str, float], limit_s: float = 30.0) -> tuple[dict[str, float], float]:
    t0 = time.monotonic()
    while True:
        now = proc_figures(pid)
        if now["fds"] <= before["fds"] or time.monotonic() - t0 > limit_s:
            return now, time.monotonic() - t0
        time.sleep(0.5)


def _result(report: Report, n: int, elapsed: float, call_ok: bool, before: dict[str, float],
            right_after: dict[str, float], settled: dict[str, float], back_s: float,
            errors: list[str]) -> dict[str, Any]:
    statuses = {kind: dict(sorted(c.items())) for kind, c in report.statuses.items()}
    total: collections.Counter[int] = collections.Counter()
    for c in report.statuses.values():
        total.update(c)
    summary = {
        "cases": report.http_cases + report.ws_cases + report.dc_cases, "requested": n,
        "http": report.http_cases, "ws_frames": report.ws_cases, "dc_events": report.dc_cases,
        "status_counts": dict(sorted(total.items())), "5xx": len(report.server_5xx),
        "error_log_lines": len(errors), "real_call_after": call_ok, "seconds": round(elapsed, 1),
        "fds": {"before": before["fds"], "right_after": right_after["fds"], "settled": settled["fds"],
                "back_to_baseline_s": round(back_s, 1)},
        "rss_mb": {"before": round(before["rss_mb"], 1), "after": round(settled["rss_mb"], 1)},
        "threads": {"before": before["threads"], "after": settled["threads"]},
    }
    return {"summary": summary, "by_path": statuses, "5xx_examples": report.server_5xx[:20],
            "error_log_examples": errors[:20]}


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_path = result["by_path"]
    codes = sorted({int(c) for counts in by_path.values() for c in counts})
    fig, ax = plt.subplots(figsize=(8, 4))
    bottom = [0] * len(by_path)
    for code in codes:
        heights = [by_path[k].get(code, 0) for k in by_path]
        ax.bar(list(by_path), heights, bottom=bottom, label=str(code))
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    s = result["summary"]
    ax.set_title(f"fuzz: {s['cases']} cases, {s['5xx']} 5xx, {s['error_log_lines']} error log lines, "
                 f"call after: {s['real_call_after']}")
    ax.set_ylabel("responses")
    ax.legend(title="status", fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
