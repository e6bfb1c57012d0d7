"""One registry of named asyncio tasks per owner (a call, an agent, the call manager).

Why one module: a bare ``create_task`` is garbage-collectable while running, its failure
surfaces (if ever) as "Task exception was never retrieved", and nobody cancels it when the
owner goes away. The registry keeps a strong reference, logs a failure once with the
owner's log prefix, and :meth:`TaskRegistry.cancel_all` cancels and *waits* — with a time
limit, naming what did not finish — the way pipecat's ``TaskManager`` and aiortc's
``stop()`` do. It lives in ``pipeline`` so both ``pipeline`` and ``media_server`` can use it.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class TaskRegistry:
    """Named tasks of one owner; closed for new tasks once :meth:`cancel_all` has run."""

    def __init__(self, owner: str, context: Callable[[], contextvars.Context] | None = None) -> None:
        self.owner = owner  # the log prefix, e.g. "call 1a2b3c4d"
        self._context = context  # a fresh context per task (e.g. with the call's ids for logs)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def closed(self) -> bool:
        return self._closed

    def names(self) -> list[str]:
        """Names of the tasks still running (for logs and tests)."""
        return sorted(task.get_name() for task in self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T] | None:
        """Run ``coro`` as a task named ``"<owner> <name>"``; None once the registry is closed.

        A closed owner is tearing down: new work would outlive it, so the coroutine is
        closed unstarted (no "never awaited" warning) instead.
        """
        if self._closed:
            coro.close()
            logger.debug("%s: not starting %s: closing", self.owner, name)
            return None
        context = self._context() if self._context is not None else None
        task = asyncio.create_task(coro, name=f"{self.owner} {name}", context=context)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()  # retrieving it also silences asyncio's own report
        if exc is not None:
            logger.error("%s: task %s failed", self.owner, task.get_name(), exc_info=exc)

    async def wait(self, timeout: float, tasks: Iterable[asyncio.Task[Any]] | None = None) -> set[asyncio.Task[Any]]:
        """Let ``tasks`` (default: all, including ones started meanwhile) finish on their own.

        Returns those still running after ``timeout`` seconds; never cancels anything.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        current = asyncio.current_task()
        while True:
            pending = {t for t in (self._tasks if tasks is None else tasks) if not t.done() and t is not current}
            remaining = deadline - loop.time()
            if not pending or remaining <= 0:
                return pending
            await asyncio.wait(pending, timeout=remaining)
            if tasks is not None:  # a fixed set: one wait is the answer
                return {t for t in pending if not t.done()}

    async def cancel_all(self, timeout: float) -> list[str]:
        """Cancel every task but the caller's own and wait up to ``timeout`` s for them to end.

        Idempotent; closes the registry. Returns (and logs) the names of stragglers: tasks
        that swallowed the cancellation or are stuck in cleanup.
        """
        self._closed = True
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current and not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        stragglers = sorted(t.get_name() for t in tasks if not t.done())
        if stragglers:
            logger.warning("%s: %d tasks still running %.1f s after cancel: %s", self.owner,
                           len(stragglers), timeout, ", ".join(stragglers))
        return stragglers
