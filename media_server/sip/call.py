"""A call from a phone: the :class:`Call` base with an RTP leg as its transport.

The narrowband edge (G.711 <-> 48 kHz frames, silence fill, media time-out) is
:class:`media_server.sip.edge.NarrowbandEdge`, shared with a room's SIP participant;
:class:`PhoneLeg` is what the SIP core needs of either.

A SIP call has no event channel to its client: events are kept (bounded) in
:class:`CallEvents` for logs, tests and listeners.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from media_server.call import AgentFactory, Call, CallSession
from media_server.sip.edge import NarrowbandEdge
from media_server.sip.rtp import RtpLeg
from pipeline import events

logger = logging.getLogger(__name__)

MAX_EVENTS = 512


class CallEvents:
    """Event sink of a SIP call: a bounded history plus optional listeners."""

    def __init__(self) -> None:
        self.history: collections.deque[tuple[float, dict[str, Any]]] = collections.deque(maxlen=MAX_EVENTS)
        self.listeners: list[Callable[[dict[str, Any]], None]] = []

    def send(self, message: dict[str, Any]) -> None:
        self.history.append((time.monotonic(), message))
        for listener in self.listeners:
            listener(message)

    def of_type(self, kind: str) -> list[tuple[float, dict[str, Any]]]:
        """(monotonic time, event) of every kept event of type ``kind``."""
        return [(t, e) for t, e in self.history if e.get("type") == kind]


class PhoneLeg(Protocol):
    """What the SIP core holds a dialog's media by: a :class:`SipCall` or a room participant."""

    id: str
    log_prefix: str
    persona_id: str
    leg: RtpLeg
    remote_bye: bool

    @property
    def event_history(self) -> CallEvents: ...
    def start(self) -> None: ...
    async def close(self, reason: str = ...) -> None: ...


class SipCall(Call):
    """A call whose audio is an :class:`RtpLeg` (see module docstring)."""

    transport = "sip"

    def __init__(self, session: CallSession, agent_factory: AgentFactory, leg: RtpLeg,
                 hangup: Callable[[str], None]) -> None:
        self._sip_events = CallEvents()
        super().__init__(session, self._sip_events, agent_factory)
        self.leg = leg
        self._hangup = hangup
        self.edge = NarrowbandEdge(leg, self.feed)
        self.remote_bye = False
        leg.on_dtmf = self._on_dtmf
        self.agent.send_dtmf = leg.send_dtmf
        self.log_prefix = f"sip {self.id[:8]}"

    @property
    def event_history(self) -> CallEvents:
        return self._sip_events

    def start(self) -> None:
        """Media flows from now on (the 200 OK is on its way)."""
        self.edge.start(self.tasks, self.track, self.log_prefix, self.end)
        self.events.send(events.turn(self.agent.state))

    def _on_dtmf(self, digit: str) -> None:
        logger.info("%s: DTMF %s", self.log_prefix, digit)
        self.agent.on_dtmf(digit)

    async def close_transport(self) -> None:
        if not self.remote_bye:
            self._hangup(self.id)
        self.leg.close()
