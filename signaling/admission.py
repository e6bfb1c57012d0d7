"""Call admission: who may open a call now, and how long an unconnected call may hold a slot.

Capacity used to count every answered call, and an answered offer whose media never
connects held its slot for 20 s — 32 bogus offers locked everybody out. Now:

- a worker admits while *connected* calls plus *pending* ones (answered, media not yet
  connected) stay under ``PARLEY_MAX_CALLS``;
- each client address may hold at most ``PARLEY_PENDING_CALLS_PER_IP`` pending calls
  (including offers being answered right now), so one address cannot fill the worker;
- a pending call still unconnected after ``PARLEY_CONNECT_TIMEOUT_S`` is closed;
- one user holds at most ``PARLEY_MAX_CALLS_PER_USER`` calls.

Refusals are ``429`` with ``Retry-After`` (the client, not the server, is over a limit) or
``503`` when the worker itself is full.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Iterator

from aiohttp import web

from media_server import liveness
from media_server.call import Call, RtcCall
from media_server.manager import CallManager
from parley import metrics
from parley.config import Settings
from signaling.errors import ApiError
from signaling.keys import CALLS, SETTINGS

logger = logging.getLogger(__name__)


class Admission:
    """Per-worker admission state: the address of every call and the offers being answered."""

    def __init__(self, settings: Settings, manager: CallManager) -> None:
        self.settings = settings
        self.manager = manager
        self._ip_of: dict[str, str] = {}  # call id -> client address
        self._answering: collections.Counter[str] = collections.Counter()  # address -> offers in flight

    def pending(self, ip: str | None = None) -> int:
        """Answered-but-unconnected calls (of ``ip``, or all), plus offers being answered."""
        calls = [c for c in self.manager.calls.values() if not c.connected]
        if ip is None:
            return len(calls) + sum(self._answering.values())
        return sum(1 for c in calls if self._ip_of.get(c.id) == ip) + self._answering[ip]

    def _refuse(self, status: int, reason: str, message: str, retry_s: float) -> ApiError:
        metrics.ADMISSION_REFUSED.labels(reason).inc()
        return ApiError(status, "busy" if status == 503 else "too_many_calls", message,
                        headers={"Retry-After": str(max(1, math.ceil(retry_s)))})

    def check(self, ip: str, user_id: str, *, connects_at_once: bool = False) -> None:
        """Raise 429/503 if a new call from ``ip`` for ``user_id`` may not start now.

        ``connects_at_once``: a WebSocket call is connected when admitted, so it never joins
        the pending pool and the per-address pending cap does not apply to it.
        """
        s, calls = self.settings, self.manager.calls.values()
        if not connects_at_once and 0 < s.pending_calls_per_ip <= self.pending(ip):
            raise self._refuse(429, "pending_per_ip", "too many calls from your address are still connecting",
                               s.connect_timeout_s)
        if s.max_calls_per_user > 0 and sum(1 for c in calls if c.session.user_id == user_id) >= s.max_calls_per_user:
            raise self._refuse(429, "per_user", f"a user may hold at most {s.max_calls_per_user} calls", 5)
        connected = sum(1 for c in calls if c.connected)
        if connected + self.pending() >= s.max_calls:
            raise self._refuse(503, "capacity", f"this worker is at its {s.max_calls} calls", s.connect_timeout_s)

    @contextlib.contextmanager
    def answering(self, ip: str, user_id: str) -> Iterator[None]:
        """Hold a pending slot for ``ip`` while its offer is being answered (ICE gathering awaits)."""
        self.check(ip, user_id)
        self._answering[ip] += 1
        try:
            yield
        finally:
            self._answering[ip] -= 1
            if self._answering[ip] <= 0:
                del self._answering[ip]

    def track(self, call: Call, ip: str) -> None:
        """Remember the call's address; close it if its media has not connected in time."""
        self._ip_of[call.id] = ip
        call.tasks.spawn(self._connect_deadline(call), "connect deadline")
        if isinstance(call, RtcCall):
            liveness.start(call, self.settings.liveness_timeout_s)
        call.tasks.spawn(self._forget(call), "admission")

    async def _connect_deadline(self, call: Call) -> None:
        if call.connected or not isinstance(call, RtcCall):
            return
        connected = asyncio.Event()

        def on_state() -> None:
            if call.connected:
                connected.set()

        call.pc.on("connectionstatechange", on_state)
        timeout = self.settings.connect_timeout_s
        try:
            await asyncio.wait_for(connected.wait(), timeout)
        except TimeoutError:
            call.tasks.spawn(call.close(f"media not connected: nothing within {timeout:g} s"), "close")
        finally:
            call.pc.remove_listener("connectionstatechange", on_state)

    async def _forget(self, call: Call) -> None:
        try:
            await call.closed.wait()
        finally:
            self._ip_of.pop(call.id, None)


ADMISSION = web.AppKey("admission", Admission)


async def _admission_ctx(app: web.Application) -> AsyncIterator[None]:
    app[ADMISSION] = Admission(app[SETTINGS], app[CALLS])
    yield


def setup(app: web.Application) -> None:
    """Register after the call manager's context (admission reads its calls)."""
    app.cleanup_ctx.append(_admission_ctx)
