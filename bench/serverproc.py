"""Start and stop ``parley serve`` processes for benchmarks, and read their metrics."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager


def free_port() -> int:
    """A loopback TCP port nothing listens on (now): for servers the tests and benches start."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def parley_servers(count: int, env: dict[str, str] | None = None) -> Iterator[list[str]]:
    """``count`` single-worker servers on their own ports (so each one's metrics can be read)."""
    procs, urls, dirs = [], [], []
    base_env = {**os.environ, "PARLEY_LOG_LEVEL": "WARNING", **(env or {})}
    try:
        for _ in range(count):
            port = free_port()
            # each its own data dir: an embedded Milvus Lite file serves one process only
            data = tempfile.mkdtemp(prefix="parley-bench-")
            dirs.append(data)
            procs.append(subprocess.Popen([sys.executable, "-m", "parley", "serve", "--port", str(port)],
                                          env={**base_env, "PARLEY_DATA_DIR": data}, stdout=subprocess.DEVNULL))
            urls.append(f"http://127.0.0.1:{port}")
        for url in urls:
            wait_healthy(url)
        yield urls
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=20)
        for data in dirs:
            shutil.rmtree(data, ignore_errors=True)


def wait_healthy(url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not become healthy within {timeout:.0f} s")


def scrape(url: str, names: tuple[str, ...], timeout: float = 5.0) -> dict[str, float]:
    """Sum of each named Prometheus sample (all label sets) on ``url``/metrics."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=timeout) as r:
        text = r.read().decode()
    out = dict.fromkeys(names, 0.0)
    for name in names:
        for m in re.finditer(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M):
            out[name] += float(m.group(1))
    return out
