"""Inbound RTP reordering: a small jitter buffer keyed by sequence number (I/O-free).

Phones and trunks send a packet every ptime; the network may reorder or lose them. The
buffer releases packets strictly in sequence order, holds at most ``depth`` packets while
waiting for a missing one, then gives up on it: the gap becomes silence of the missing
duration (from the RTP timestamps) so the agent's timeline — and the end-of-turn timer —
stays in step with the caller's. Duplicates and packets older than the playout point are
dropped. Releasing on arrival (not on a clock) keeps latency at zero when nothing is lost.
"""

from __future__ import annotations

from dataclasses import dataclass

RESYNC_AFTER = 25  # this many 'old' packets in a row mean the sender's sequence jumped
MAX_GAP_SAMPLES = 8000  # a gap longer than 1 s is a stream restart, not loss: no 10 s of silence


@dataclass(slots=True)
class Released:
    """One packet's payload in order, or ``payload=None`` for ``samples`` of lost audio."""

    payload: bytes | None
    samples: int


def _newer(a: int, b: int) -> bool:
    """Is 16-bit sequence ``a`` after ``b`` (RFC 3550 wrap-around)?"""
    return a != b and ((a - b) & 0xFFFF) < 0x8000


class JitterBuffer:
    """Sequence-ordered release with bounded waiting for missing packets."""

    def __init__(self, depth: int = 3, samples_per_packet: int = 160) -> None:
        self.depth = depth
        self.samples_per_packet = samples_per_packet
        self._pending: dict[int, tuple[int, bytes]] = {}  # seq -> (timestamp, payload)
        self._next: int | None = None
        self._last_ts: int | None = None
        self._last_samples = samples_per_packet
        self.lost = 0
        self.late = 0
        self.received = 0
        self._late_run = 0

    def reset(self) -> None:
        """Forget the sequence state (a new SSRC: the remote restarted its stream)."""
        self._pending.clear()
        self._next = self._last_ts = None
        self._late_run = 0

    def push(self, seq: int, timestamp: int, payload: bytes) -> list[Released]:
        """Accept one packet; returns whatever can now be released, in order."""
        self.received += 1
        if self._next is None:
            self._next = seq
        if seq != self._next and not _newer(seq, self._next) or seq in self._pending:
            self.late += 1
            self._late_run += 1
            if self._late_run > RESYNC_AFTER:  # a sequence jump backwards: follow the stream
                self.reset()
            return []
        self._late_run = 0
        self._pending[seq] = (timestamp, payload)
        out = self._drain()
        while len(self._pending) > self.depth:  # waited long enough: skip the missing one
            out += self._skip()
            out += self._drain()
        return out

    def _drain(self) -> list[Released]:
        out = []
        while self._next in self._pending:
            timestamp, payload = self._pending.pop(self._next)
            out += self._gap_before(timestamp)
            out.append(Released(payload, len(payload)))
            self._last_ts, self._last_samples = timestamp, len(payload) or self.samples_per_packet
            self._next = (self._next + 1) & 0xFFFF
        return out

    def _gap_before(self, timestamp: int) -> list[Released]:
        """Silence for audio between the last released packet and this one (loss)."""
        if self._last_ts is None:
            return []
        gap = ((timestamp - self._last_ts) & 0xFFFFFFFF) - self._last_samples
        if 0 < gap <= MAX_GAP_SAMPLES:
            return [Released(None, gap)]
        return []

    def _skip(self) -> list[Released]:
        expected = self._next if self._next is not None else 0
        oldest = min(self._pending, key=lambda s: (s - expected) & 0xFFFF)
        self.lost += (oldest - expected) & 0xFFFF
        self._next = oldest
        return []
