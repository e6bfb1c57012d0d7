"""A worker ends soon after its drain even when something in its shutdown never returns
(a client close without a time limit, a non-daemon thread): it says where it was stuck."""

from __future__ import annotations

import subprocess
import sys

from parley.config import REPO_ROOT

STUCK = """
import logging, threading, time
logging.basicConfig(level=logging.INFO)
from signaling.worker import _exit_within
threading.Thread(target=time.sleep, args=(600,), name="stuck close").start()  # non-daemon: blocks exit
_exit_within(0.5)
time.sleep(600)  # the shutdown that never returns
"""


def test_a_stuck_shutdown_still_ends_the_worker_and_shows_where_it_hung() -> None:
    proc = subprocess.run([sys.executable, "-c", STUCK], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "shutdown unfinished" in proc.stderr
    assert 'File "<string>", line 7' in proc.stderr, proc.stderr[-2000:]  # where the main thread hung
    assert proc.stderr.count("hread 0x") >= 3  # every thread: main, the stuck one, the watchdog
