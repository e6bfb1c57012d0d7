"""Running a node: one worker process, or N of them sharing the port (SO_REUSEPORT).

aiortc is bound by the GIL (~20–30 calls per process, measured in bench/results/capacity.json), so a node scales by
processes: the kernel spreads new connections over the workers, each call lives entirely
inside the worker that answered its offer (its UDP media sockets are that worker's), and
requests about a call reach that worker wherever they land (signaling/routing.py). Several
workers run under a supervisor (signaling/supervisor.py) that restarts a crashed one.
uvloop is used when importable: it cuts the per-call CPU by about a quarter.
"""

from __future__ import annotations

import asyncio
import logging
import os

from parley import logfmt
from parley.config import Settings
from signaling import tls

logger = logging.getLogger(__name__)


def configure_logging(settings: Settings) -> None:
    logfmt.configure(settings.log_level, settings.log_format)


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def run_worker(settings: Settings, reuse_port: bool = False) -> None:
    """Serve in this process until SIGINT/SIGTERM, then drain (signaling.worker)."""
    from signaling.worker import serve_worker

    configure_logging(settings)
    if settings.uvloop:
        _install_uvloop()
    asyncio.run(serve_worker(settings, reuse_port))


def serve(settings: Settings) -> int:
    """One worker in this process, or a supervisor with N worker processes (0 = one per core)."""
    tls.server_context(settings)  # a bad certificate fails here, once, not in every worker
    workers = settings.workers or os.cpu_count() or 1
    if workers == 1:
        run_worker(settings)
        return 0
    from signaling.supervisor import Supervisor

    configure_logging(settings)
    return Supervisor(settings, workers).run()
