"""The node's supervisor: one worker process per core, restarted when one crashes.

aiortc holds the GIL for its per-packet work, so one process saturates one core; a node
therefore runs N workers (``--workers N``, 0 = one per core) that share the public port with
``SO_REUSEPORT``. Media never crosses processes: each worker owns the peers it answered.

The supervisor itself does no serving. It starts the shared services the workers need
(:mod:`signaling.embedded`), spawns the workers, restarts any that dies (with a growing
back-off, so a worker that cannot start does not spin), and on SIGTERM/SIGINT passes the
signal on — each worker drains (``PARLEY_DRAIN_S``) — then waits for them, killing any that
outlives the drain limit by more than a grace period.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess

from parley.config import Settings
from signaling.embedded import shared_services

logger = logging.getLogger(__name__)

BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)
STABLE_S = 60.0  # a worker that lived this long resets its back-off
EXIT_GRACE_S = 15.0  # beyond the drain limit, before SIGKILL


def _worker_main(settings: Settings) -> None:
    from signaling.server import run_worker

    run_worker(settings, reuse_port=True)


@dataclass
class Slot:
    """One worker position: its current process and its restart history."""

    index: int
    process: BaseProcess | None = None
    started: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    restarts: int = field(default=0)


class Supervisor:
    """Run ``count`` workers of ``settings`` until signalled; restart crashed ones."""

    def __init__(self, settings: Settings, count: int) -> None:
        self.settings = settings
        self.slots = [Slot(i) for i in range(count)]
        self._ctx = multiprocessing.get_context("spawn")
        self._stopping = False

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        with shared_services(self.settings) as settings:
            self.settings = settings
            for slot in self.slots:
                self._spawn(slot)
            logger.info("supervisor %d: %d workers on port %d", os.getpid(), len(self.slots), settings.port)
            while not self._stopping:
                self._watch()
            return self._shutdown()

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self._stopping:  # a second signal: tell workers to cut their drain short
            self._signal_all(signal.SIGTERM)
            return
        self._stopping = True
        logger.info("supervisor: signal %d, draining workers", signum)
        self._signal_all(signal.SIGTERM)

    def _signal_all(self, signum: int) -> None:
        for slot in self.slots:
            p = slot.process
            if p is not None and p.is_alive() and p.pid:
                os.kill(p.pid, signum)

    def _spawn(self, slot: Slot) -> None:
        p = self._ctx.Process(target=_worker_main, args=(self.settings,), name=f"parley-worker-{slot.index}")
        p.start()
        slot.process, slot.started, slot.restart_at = p, time.monotonic(), None
        logger.info("worker %d started (pid %s)", slot.index, p.pid)

    def _watch(self) -> None:
        """Wait up to 0.5 s for a worker to exit; schedule and perform restarts."""
        alive = [s.process.sentinel for s in self.slots if s.process is not None and s.process.is_alive()]
        if alive:
            multiprocessing.connection.wait(alive, timeout=0.5)
        else:
            time.sleep(0.1)
        now = time.monotonic()
        for slot in self.slots:
            p = slot.process
            if self._stopping:
                return
            if p is not None and not p.is_alive() and slot.restart_at is None:
                slot.failures = 0 if now - slot.started > STABLE_S else slot.failures + 1
                delay = BACKOFF_S[min(slot.failures, len(BACKOFF_S) - 1)]
                logger.warning("worker %d (pid %s) exited with %s; restarting in %.1f s",
                               slot.index, p.pid, p.exitcode, delay)
                slot.restart_at = now + delay
            if slot.restart_at is not None and now >= slot.restart_at:
                slot.restarts += 1
                self._spawn(slot)

    def _shutdown(self) -> int:
        deadline = time.monotonic() + self.settings.drain_s + EXIT_GRACE_S
        for slot in self.slots:
            p = slot.process
            if p is None:
                continue
            p.join(timeout=max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                logger.warning("worker %d outlived the drain; killing it", slot.index)
                p.kill()
                p.join(timeout=5)
        codes = [s.process.exitcode or 0 for s in self.slots if s.process is not None]
        return 0 if all(c in (0, -signal.SIGTERM) for c in codes) else 1
