"""Bounded waits for conditions the tests cannot be told about (polled, with a deadline)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any


async def until(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    """True as soon as ``predicate()`` holds; False if it still does not after ``timeout`` s."""
    for _ in range(max(1, int(timeout / step))):
        if predicate():
            return True
        await asyncio.sleep(step)
    return predicate()


async def until_async(probe: Callable[[], Awaitable[Any]], timeout: float, step: float = 0.1) -> bool:
    """True once ``await probe()`` returns without raising (e.g. a server answering)."""
    for _ in range(max(1, int(timeout / step))):
        try:
            await probe()
            return True
        except Exception:
            await asyncio.sleep(step)
    return False
