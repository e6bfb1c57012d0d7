"""The one place Parley reaches past aiortc's public API, and why.

aiortc gives every inbound audio track a jitter buffer that holds 4 packets (≈ 80 ms)
before it releases the first frame, and offers no setting for it. For a voice agent that
delay is paid twice per exchange (user → agent, and in our test clients agent → user) and
directly lengthens turn latency and barge-in reaction. On loopback and LAN paths 1–2
packets are enough, so Parley rebuilds that buffer with ``PARLEY_JITTER_PREFETCH``
packets right after the remote description is applied — before any packet has arrived,
so nothing buffered is lost. If aiortc renames the attribute this degrades to its default
with a warning instead of failing the call.
"""

from __future__ import annotations

import logging

from aiortc import RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer

logger = logging.getLogger(__name__)

_ATTR = "_RTCRtpReceiver__jitter_buffer"


def set_audio_jitter_prefetch(pc: RTCPeerConnection, prefetch: int) -> None:
    """Give each audio receiver of ``pc`` a jitter buffer releasing after ``prefetch`` packets."""
    if prefetch <= 0:
        return
    for transceiver in pc.getTransceivers():
        receiver = transceiver.receiver
        if transceiver.kind != "audio" or not hasattr(receiver, _ATTR):
            if transceiver.kind == "audio":
                logger.warning("aiortc has no %s; keeping its default jitter buffer", _ATTR)
            continue
        old: JitterBuffer = getattr(receiver, _ATTR)
        setattr(receiver, _ATTR, JitterBuffer(capacity=old.capacity, prefetch=prefetch))
