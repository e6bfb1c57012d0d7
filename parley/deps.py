"""Health of the services a worker depends on (Postgres, Redis, Milvus, model backends).

A dependency that stops answering fails every request until it returns; logging each failure
would bury the log, and logging none would hide the outage. So failures are *counted* every
time (``parley_dependency_errors_total{dependency}``) but *logged* once per outage — on the
transition from up to down — and the recovery is logged once too.
"""

from __future__ import annotations

import logging
import time
import traceback

from parley import metrics

logger = logging.getLogger(__name__)

RELOG_AFTER_S = 300.0  # a dependency nobody reports as back is logged again after this

_down: dict[str, float] = {}  # dependency -> when its outage was last logged


def failed(dependency: str, exc: BaseException, fallback: str) -> None:
    """``dependency`` failed with ``exc``; ``fallback`` says what the caller does instead."""
    metrics.DEPENDENCY_ERRORS.labels(dependency).inc()
    now = time.monotonic()
    if now - _down.get(dependency, -RELOG_AFTER_S) >= RELOG_AFTER_S:
        _down[dependency] = now
        logger.warning("%s unavailable (%s: %s); %s until it returns", dependency, type(exc).__name__,
                       str(exc)[:200], fallback)


def ok(dependency: str) -> None:
    """``dependency`` answered: log the recovery if it was down."""
    if _down.pop(dependency, None) is not None:
        logger.info("%s is back", dependency)


def is_down(dependency: str) -> bool:
    return dependency in _down


#: the client libraries whose failures name a dependency (module prefix -> dependency)
_LIBRARIES = {"asyncpg": "postgres", "redis": "redis", "pymilvus": "milvus", "grpc": "milvus"}


def name_of(exc: BaseException, default: str) -> str:
    """The dependency ``exc`` came from, by the library that raised or wrapped it.

    A socket error raised inside asyncpg's connect is a plain ``OSError``; the frames it
    passed through still say it was Postgres, so the traceback is read too.
    """
    seen: BaseException | None = exc
    while seen is not None:
        modules = [type(seen).__module__]
        modules += [frame.f_globals.get("__name__", "") for frame, _ in traceback.walk_tb(seen.__traceback__)]
        for module in reversed(modules):  # the innermost frame knows best
            library = _LIBRARIES.get(str(module).split(".")[0])
            if library is not None:
                return library
        seen = seen.__cause__ or seen.__context__
    return default


def reset() -> None:
    """Forget every recorded outage (tests; a process that starts its services anew)."""
    _down.clear()
