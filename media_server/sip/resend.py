"""Drives a :class:`~media_server.sip.transaction.Retransmit` on the event loop.

The timer state machine says when; this object owns the ``call_at`` handle and the send,
so that a 200 OK waiting for its ACK, a 487 waiting for its ACK and our own BYE or INVITE
waiting for a response all retransmit the same way and stop the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from media_server.sip.transaction import TIMEOUT, Retransmit, Step


class Resender:
    def __init__(self, send: Callable[[], None], on_timeout: Callable[[], None], *,
                 reliable: bool, timeout: float = TIMEOUT, cap: bool = True) -> None:
        self._loop = asyncio.get_running_loop()
        self._send = send
        self._on_timeout = on_timeout
        self.timer = Retransmit(self._loop.time(), reliable=reliable, timeout=timeout, cap=cap)
        self._handle: asyncio.TimerHandle | None = None
        self._schedule()

    @property
    def active(self) -> bool:
        return not self.timer.stopped

    @property
    def resends(self) -> int:
        return self.timer.sends

    def _schedule(self) -> None:
        self._handle = self._loop.call_at(self.timer.next_at, self._fire)

    def _fire(self) -> None:
        step = self.timer.poll(self._loop.time())
        if step is Step.SEND:
            self._send()
        elif step is Step.TIMEOUT:
            self._on_timeout()
            return
        if not self.timer.stopped:
            self._schedule()

    def stop(self) -> None:
        self.timer.stop()
        if self._handle is not None:
            self._handle.cancel()
