"""A room participant on the phone: ``sip:room-ID@host`` joins room ID.

The phone's RTP leg is bridged to the room by the same narrowband edge a 1:1 SIP call
uses (:class:`media_server.sip.edge.NarrowbandEdge`): inbound G.711 becomes the
participant's 10 ms frames (mixer, and this person's own :class:`SpeakerPipeline`), and the
participant's mix-minus goes back down to 8 kHz. A phone has no event channel, so events
are kept (bounded) in :class:`CallEvents` like a SIP call's; keypad digits are logged only.
The SIP core holds it as a :class:`media_server.sip.call.PhoneLeg`: a BYE from the phone
closes the participant (it leaves the room), and a participant closed by the room (DELETE,
idle end, shutdown) sends the phone its BYE.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from media_server.rooms.participant import Participant
from media_server.sip.call import CallEvents
from media_server.sip.edge import NarrowbandEdge
from media_server.sip.rtp import RtpLeg
from parley.config import Settings

if TYPE_CHECKING:
    from media_server.rooms.room import Room

logger = logging.getLogger(__name__)


class SipParticipant(Participant):
    transport = "sip"

    def __init__(self, room: Room, name: str, settings: Settings, leg: RtpLeg,
                 hangup: Callable[[str], None]) -> None:
        self._sip_events = CallEvents()
        super().__init__(room, name, settings, self._sip_events)
        self.leg = leg
        self.persona_id = room.persona_id
        self.remote_bye = False
        self._hangup = hangup
        self.edge = NarrowbandEdge(leg, self.feed)
        leg.on_dtmf = self._on_dtmf

    @property
    def event_history(self) -> CallEvents:
        return self._sip_events

    def start(self) -> None:
        """Media flows from now on (the 200 OK is on its way)."""
        self.edge.start(self.tasks, self.out, self.log_prefix, self.hang_up)

    def _on_dtmf(self, digit: str) -> None:
        logger.info("%s: DTMF %s (ignored in a room)", self.log_prefix, digit)

    async def close_transport(self) -> None:
        if not self.remote_bye:
            self._hangup(self.id)
        self.leg.close()
