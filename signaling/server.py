"""Running a node: one worker process, or N of them sharing the port (SO_REUSEPORT).

aiortc is bound by the GIL (~20–30 calls per process, FIELD-NOTES), so a node scales by
processes: the kernel spreads new connections over the workers, and each call lives
entirely inside the worker that accepted its offer (its UDP media sockets are that
worker's). uvloop is used when importable: it cuts the per-call CPU by about a quarter.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal

from aiohttp import web

from parley.config import Settings

logger = logging.getLogger(__name__)


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aioice").setLevel(logging.WARNING)
    logging.getLogger("aiortc").setLevel(logging.WARNING)


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def run_worker(settings: Settings, reuse_port: bool = False) -> None:
    """Serve in this process until SIGINT/SIGTERM; calls are hung up on the way out."""
    from signaling.app import create_app

    configure_logging(settings)
    if settings.uvloop:
        _install_uvloop()
    app = create_app(settings)
    logger.info("worker %d serving on http://%s:%d", os.getpid(), settings.host, settings.port)
    web.run_app(app, host=settings.host, port=settings.port, reuse_port=reuse_port,
                shutdown_timeout=5.0, print=None, access_log=None)


def serve(settings: Settings) -> int:
    workers = settings.workers or os.cpu_count() or 1
    if workers > 1 and not settings.milvus_uri.startswith(("http://", "https://")):
        raise ValueError(
            f"{workers} workers need a Milvus server (PARLEY_MILVUS_URI=http://…): the embedded "
            "Milvus Lite file can be opened by one process only"
        )
    if workers == 1:
        run_worker(settings)
        return 0
    configure_logging(settings)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=run_worker, args=(settings, True), name=f"parley-worker-{i}")
             for i in range(workers)]
    for p in procs:
        p.start()
    logger.info("started %d workers on port %d", workers, settings.port)

    def stop(signum: int, _frame: object) -> None:
        for p in procs:
            if p.is_alive() and p.pid:
                os.kill(p.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for p in procs:
        p.join()
    return max((p.exitcode or 0) for p in procs)
