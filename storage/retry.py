"""Background writes that wait out a short Postgres outage (a restart, killed connections).

The turn log and session touches are written after each reply, off the caller's path. A
Postgres restart or a terminated connection should not lose them, and a long outage should
not pile them up or fill the log: each write is retried with backoff for up to
``RETRY_FOR_S``, then dropped. Failures are counted (``parley_dependency_errors_total``
per failed attempt, ``parley_writes_dropped_total{what}`` per write given up) and the
outage is logged once, with its recovery, by :mod:`parley.deps`. A failure that is not
about the connection (a constraint, a bug) is not retried: it is logged with its traceback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import asyncpg
from prometheus_client import Counter

from parley import deps

logger = logging.getLogger(__name__)

RETRY_FOR_S = 15.0  # a write still failing after this long is dropped
FIRST_BACKOFF_S = 0.2
MAX_BACKOFF_S = 2.0

WRITES_DROPPED = Counter(
    "parley_writes_dropped_total", "Background Postgres writes given up after retrying (or at hang-up)", ["what"]
)

#: Postgres is down, restarting or dropped the connection: worth waiting for
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, crash, "cannot connect now"
)


async def write_with_retry(what: str, write: Callable[[], Awaitable[object]], *, context: str = "",
                           retry_for_s: float = RETRY_FOR_S) -> bool:
    """Run ``write()`` until it succeeds, retrying connection failures; False if dropped.

    ``what`` names the write in the metric ("turn log", "session touch"); ``context`` (the
    call's log prefix) goes into the one log line of an outage.
    """
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + retry_for_s
    backoff = FIRST_BACKOFF_S
    try:
        while True:
            try:
                await write()
            except CONNECTION_ERRORS as exc:
                deps.failed("postgres", exc, f"background writes ({what}, first: {context or '-'}) are retried "
                            f"for {retry_for_s:.0f} s, then dropped")
                if loop.time() + backoff > give_up_at:
                    break
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            except Exception:
                logger.exception("%s: %s write failed", context, what)
                WRITES_DROPPED.labels(what).inc()
                return False
            deps.ok("postgres")
            return True
    except asyncio.CancelledError:  # hang-up while waiting for Postgres: the write is lost
        WRITES_DROPPED.labels(what).inc()
        raise
    WRITES_DROPPED.labels(what).inc()
    logger.debug("%s: %s write dropped after %.0f s of retries", context, what, retry_for_s)
    return False
