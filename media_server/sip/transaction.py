"""RFC 3261 timers and transaction matching as I/O-free state machines.

The user agent core asks these objects "what now?" with a clock value and acts on the
answer (send again, give up); nothing here sleeps or touches a socket, so every timer
sequence is testable without a loop. The core schedules ``loop.call_at(next_at)``.

- :class:`Retransmit` is Timer A/E/G (and the UAS 2xx retransmission of section 13.3.1.4):
  resend after T1, doubling, capped at T2, until stopped; give up at 64*T1 (Timers B/F/H).
- :class:`ServerTransactions` absorbs retransmitted requests: the same branch gets the
  last response again instead of a second INVITE being processed (section 17.2), for 64*T1.
"""

from __future__ import annotations

import collections
import enum
import secrets
from dataclasses import dataclass

T1 = 0.5
T2 = 4.0
T4 = 5.0
TIMEOUT = 64 * T1  # Timers B, F, H, J
MAGIC_COOKIE = "z9hG4bK"
MAX_TRANSACTIONS = 4096


def new_branch() -> str:
    return MAGIC_COOKIE + secrets.token_hex(8)


def new_tag() -> str:
    return secrets.token_hex(6)


class Step(enum.Enum):
    WAIT = "wait"
    SEND = "send"
    TIMEOUT = "timeout"


class Retransmit:
    """One message resent on the RFC 3261 schedule until :meth:`stop` or time-out.

    ``reliable`` transports (TCP) never resend, but the 64*T1 time-out still applies (an
    ACK that never comes ends the call just the same).
    """

    def __init__(self, now: float, *, t1: float = T1, t2: float = T2, timeout: float = TIMEOUT,
                 reliable: bool = False, cap: bool = True) -> None:
        self.started = now
        self.interval = t1
        self._t2 = t2 if cap else float("inf")
        self.deadline = now + timeout
        self.next_send = float("inf") if reliable else now + t1
        self.sends = 0
        self.stopped = False

    @property
    def next_at(self) -> float:
        return min(self.next_send, self.deadline)

    def poll(self, now: float) -> Step:
        """What to do at ``now``: nothing yet, resend (then wait), or give up."""
        if self.stopped:
            return Step.WAIT
        if now >= self.deadline:
            self.stopped = True
            return Step.TIMEOUT
        if now >= self.next_send:
            self.interval = min(self.interval * 2, self._t2)
            self.next_send = now + self.interval
            self.sends += 1
            return Step.SEND
        return Step.WAIT

    def stop(self) -> None:
        self.stopped = True


@dataclass(slots=True)
class _Entry:
    response: bytes | None
    expires: float


class ServerTransactions:
    """Requests seen recently (by branch + method) and the last response sent to each."""

    def __init__(self, linger: float = TIMEOUT, capacity: int = MAX_TRANSACTIONS) -> None:
        self._linger = linger
        self._capacity = capacity
        self._entries: collections.OrderedDict[tuple[str, str], _Entry] = collections.OrderedDict()

    @staticmethod
    def key(branch: str, method: str, call_id: str, cseq: int) -> tuple[str, str]:
        """RFC 3261 branch when it has the magic cookie; RFC 2543 peers fall back to
        Call-ID + CSeq (section 17.2.3)."""
        if branch.startswith(MAGIC_COOKIE):
            return branch, method
        return f"{call_id}/{cseq}", method

    def seen(self, key: tuple[str, str], now: float) -> _Entry | None:
        """The entry of a retransmitted request, or None for a new one."""
        self._expire(now)
        return self._entries.get(key)

    def begin(self, key: tuple[str, str], now: float) -> None:
        self._entries[key] = _Entry(None, now + self._linger)
        while len(self._entries) > self._capacity:  # a flood must not grow memory
            self._entries.popitem(last=False)

    def respond(self, key: tuple[str, str], wire: bytes, now: float) -> None:
        entry = self._entries.get(key)
        if entry is not None:
            entry.response = wire
            entry.expires = now + self._linger

    def _expire(self, now: float) -> None:
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if entry.expires > now:
                break
            del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)
