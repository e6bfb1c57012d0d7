"""One worker process: the public port, its own internal port, and a graceful drain.

A worker listens twice: on the node's public port (shared with the other workers through
``SO_REUSEPORT``) and on a port of its own at ``PARLEY_INTERNAL_HOST``, which it announces
in the registry so other workers — on this node or another — can forward requests about
its calls to it (:mod:`signaling.routing`).

SIGTERM (or SIGINT) starts a drain instead of an abrupt stop: the worker tells the registry
it is draining (new calls go elsewhere, ``GET /ready`` answers 503), lets its calls go on
for up to ``PARLEY_DRAIN_S`` seconds, then tells the remaining clients why with an
``error {code: "server_draining"}`` event and hangs up. A second signal cuts the drain short.
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import os
import signal
import socket
import threading
import time
from typing import Any

from aiohttp import web

from parley.config import Settings
from pipeline import events
from signaling import tls
from signaling.keys import CALLS
from signaling.routing import CLUSTER

logger = logging.getLogger(__name__)

SHUTDOWN_LIMIT_S = 8.0  # drain end -> process end (the drain: drain_s + 5.3 s at most; supervisor: + 15 s)
EVENT_FLUSH_S = 0.3  # after the drain event, before the peers close: let it leave the DataChannel
DRAIN_MESSAGE = "the server is restarting; your call was ended, please call again"


async def serve_worker(settings: Settings, reuse_port: bool) -> None:
    """Serve ``settings`` until a signal, then drain and shut down."""
    from signaling.app import create_app

    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0, handle_signals=False)
    await runner.setup()
    try:
        # the internal socket first: a call's claim carries this address from its first request
        internal = socket.create_server((settings.internal_host, 0))
        await web.SockSite(runner, internal).start()
        app[CLUSTER].set_internal_address(settings.internal_host, internal.getsockname()[1])
        # TLS on the public site only: the internal one is plain HTTP on PARLEY_INTERNAL_HOST
        await web.TCPSite(runner, settings.host, settings.port, reuse_port=reuse_port,
                          ssl_context=tls.server_context(settings)).start()
        logger.info("worker %s serving on %s://%s:%d (internal %s)", app[CLUSTER].id, tls.scheme(settings),
                    settings.host, settings.port, app[CLUSTER].url)
        signals = _signals()
        await signals.get()
        await drain(app, settings.drain_s, signals)
        _exit_within(SHUTDOWN_LIMIT_S)
    finally:
        await runner.cleanup()
    logger.info("worker %d stopped", os.getpid())


def _exit_within(limit_s: float) -> None:
    """Make sure the process ends soon after its drain, whatever it is still waiting for.

    After the drain the calls are over and their records written; what is left is closing
    clients (Postgres pool, Redis, Milvus) and joining threads, none of which has a time
    limit of its own. A process that never ends keeps its port and leaves the supervisor to
    SIGKILL it without a word; this one says where it was stuck (every thread's stack, on
    stderr) and exits.
    """

    def watchdog() -> None:
        time.sleep(limit_s)
        logger.warning("worker %d: shutdown unfinished %.1f s after the drain; stacks follow, exiting",
                       os.getpid(), limit_s)
        faulthandler.dump_traceback(all_threads=True)
        logging.shutdown()
        os._exit(0)

    threading.Thread(target=watchdog, name="shutdown watchdog", daemon=True).start()


def _signals() -> asyncio.Queue[int]:
    """SIGTERM/SIGINT as queue items, so the drain can wait for a second one."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, queue.put_nowait, sig)
    return queue


async def drain(app: web.Application, limit_s: float, signals: asyncio.Queue[int] | None = None) -> None:
    """Stop admitting, let calls finish for up to ``limit_s``, then end the rest with an event."""
    cluster, manager = app[CLUSTER], app[CALLS]
    await cluster.begin_drain()
    calls = list(manager.calls.values())
    logger.info("worker %d draining: %d calls may go on for up to %.0f s", os.getpid(), len(calls), limit_s)
    if calls:
        all_closed = asyncio.ensure_future(asyncio.wait([asyncio.ensure_future(c.closed.wait()) for c in calls]))
        waits: list[asyncio.Future[Any]] = [all_closed]
        if signals is not None:  # a second signal ends the drain now
            waits.append(asyncio.ensure_future(signals.get()))
        await asyncio.wait(waits, timeout=limit_s, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waits:
            waiter.cancel()
    remaining = list(manager.calls.values())
    for call in remaining:
        call.events.send(events.error("server_draining", DRAIN_MESSAGE))
    if remaining:
        await asyncio.sleep(EVENT_FLUSH_S)
        await asyncio.wait([asyncio.ensure_future(c.close("drain limit")) for c in remaining], timeout=5.0)
