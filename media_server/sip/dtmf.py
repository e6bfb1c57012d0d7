"""DTMF as RFC 4733 telephone-events, both ways (I/O-free).

An event is a run of packets sharing one RTP timestamp: the first carries the marker bit,
``duration`` grows, and the last three repeat with the E (end) bit set. The receiver
reports a digit once, on its first packet (so ``#`` can end the caller's turn at once),
and ignores the repeats; the sender yields the packets of a digit one per 20 ms tick.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

DIGITS = "0123456789*#ABCD"
TICK_SAMPLES = 160  # 20 ms at 8 kHz
END_REPEATS = 3


@dataclass(frozen=True, slots=True)
class EventPayload:
    event: int
    end: bool
    volume: int
    duration: int

    @property
    def digit(self) -> str | None:
        return DIGITS[self.event] if self.event < len(DIGITS) else None


def parse(payload: bytes) -> EventPayload | None:
    if len(payload) < 4:
        return None
    event, flags, duration = struct.unpack("!BBH", payload[:4])
    return EventPayload(event, bool(flags & 0x80), flags & 0x3F, duration)


def pack(event: int, end: bool, volume: int, duration: int) -> bytes:
    return struct.pack("!BBH", event, (0x80 if end else 0) | (volume & 0x3F), min(duration, 0xFFFF))


class DtmfReceiver:
    """Turns telephone-event packets into digits, once per event."""

    def __init__(self) -> None:
        self._last_timestamp: int | None = None

    def push(self, timestamp: int, payload: bytes) -> str | None:
        """The digit this packet starts, or None (a repeat, an end packet, or not a digit)."""
        parsed = parse(payload)
        if parsed is None or parsed.digit is None or timestamp == self._last_timestamp:
            return None
        self._last_timestamp = timestamp
        return parsed.digit


@dataclass(slots=True)
class OutgoingEvent:
    """One digit being sent: payloads for successive 20 ms ticks."""

    event: int
    ticks: int  # total ticks of tone
    sent: int = 0
    ends_sent: int = 0

    def next_payload(self) -> tuple[bytes, bool] | None:
        """(payload, marker) for this tick; None when the event is finished."""
        if self.sent < self.ticks:
            self.sent += 1
            return pack(self.event, False, 10, self.sent * TICK_SAMPLES), self.sent == 1
        if self.ends_sent < END_REPEATS:
            self.ends_sent += 1
            return pack(self.event, True, 10, self.ticks * TICK_SAMPLES), False
        return None


def outgoing(digits: str, tone_ms: int = 100) -> list[OutgoingEvent]:
    """Events for ``digits`` (characters outside 0-9*#A-D are refused)."""
    events = []
    for ch in digits.upper():
        if ch not in DIGITS:
            raise ValueError(f"not a DTMF digit: {ch!r}")
        events.append(OutgoingEvent(DIGITS.index(ch), max(1, tone_ms // 20)))
    return events
