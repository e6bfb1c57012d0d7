"""The RTP leg of a SIP call: one UDP socket, G.711 both ways, RFC 4733 DTMF both ways.

- Symmetric RTP (latching): we send to the address the caller's packets come *from*, not
  only to the one its SDP names — behind NAT they differ, and it is what PBXs expect. The
  first packet latches; a different source is accepted only with a new SSRC (a re-routed
  stream), so a stray or spoofed packet cannot steal the leg.
- Inbound packets go through :class:`JitterBuffer` (reorder, loss -> silence) and are
  decoded to 8 kHz int16 for the call; telephone-events become digits.
- Outbound: the call hands one 20 ms 8 kHz frame per tick (paced by the ``AgentTrack``);
  a queued digit replaces the audio of the ticks it spans. While the remote holds the call
  (``sendonly``/``inactive``) nothing is sent but the RTP clock keeps running.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import Callable

import numpy as np
from aiortc.rtp import RtpPacket

from media_server.sip import dtmf, g711
from media_server.sip.jitter import JitterBuffer
from media_server.sip.sdp import MediaOffer

logger = logging.getLogger(__name__)

MAX_DATAGRAM = 2048
SAMPLES_PER_TICK = 160  # ptime 20 at 8 kHz
PORT_TRIES = 64
CN = 13  # comfort noise (RFC 3389): treated as silence

Address = tuple[str, int]


def parse_port_range(spec: str) -> tuple[int, int] | None:
    """``"10000-20000"`` -> (10000, 20000); empty -> None (any free port)."""
    if not spec.strip():
        return None
    lo, sep, hi = spec.partition("-")
    if not sep or not lo.strip().isdigit() or not hi.strip().isdigit() or not 0 < int(lo) <= int(hi) < 65536:
        raise ValueError("PARLEY_SIP_RTP_PORTS must look like 10000-20000")
    return int(lo), int(hi)


class RtpLeg(asyncio.DatagramProtocol):
    """One call's media socket (see module docstring)."""

    def __init__(self) -> None:
        self.on_audio: Callable[[np.ndarray, float], None] = lambda pcm, t: None
        self.on_dtmf: Callable[[str], None] = lambda digit: None
        self.transport: asyncio.DatagramTransport | None = None
        self.local_port = 0
        self.remote: Address | None = None  # from SDP
        self.latched: Address | None = None  # from the packets themselves
        self.remote_ssrc: int | None = None
        self.payload_type = g711.PCMU
        self.dtmf_pt: int | None = None
        self.sending = True  # False while the remote holds the call
        self.jitter = JitterBuffer()
        self._dtmf_rx = dtmf.DtmfReceiver()
        self._dtmf_tx: list[dtmf.OutgoingEvent] = []
        self._dtmf_ts: int | None = None
        self.ssrc = secrets.randbits(32)
        self._seq = secrets.randbits(16)
        self._ts = secrets.randbits(32)
        self.packets_in = 0
        self.packets_out = 0
        self.dropped = 0
        self.digits_in: list[str] = []
        self.last_rx = 0.0

    @classmethod
    async def open(cls, host: str, ports: tuple[int, int] | None) -> RtpLeg:
        """Bind a socket on ``host``, in ``ports`` when given (the range a firewall opens)."""
        loop = asyncio.get_running_loop()
        candidates = [0] if ports is None else random.sample(range(ports[0], ports[1] + 1),
                                                               min(PORT_TRIES, ports[1] - ports[0] + 1))
        error: OSError | None = None
        for port in candidates:
            try:
                _, leg = await loop.create_datagram_endpoint(cls, local_addr=(host, port))
            except OSError as exc:
                error = exc
                continue
            return leg
        raise OSError(f"no free RTP port in {ports}: {error}")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint's transport
        self.local_port = transport.get_extra_info("sockname")[1]

    def apply(self, offer: MediaOffer) -> None:
        """Use a remote description (the first, or a re-INVITE's: hold, resume, move)."""
        self.payload_type = offer.codec()
        self.dtmf_pt = offer.dtmf_pt()
        self.sending = not offer.on_hold and offer.port != 0
        if not offer.on_hold:
            new = (offer.address, offer.port)
            if new != self.remote:
                self.remote, self.latched = new, None  # a moved stream: latch again

    # -- inbound ------------------------------------------------------------------
    def datagram_received(self, data: bytes, addr: Address) -> None:
        if len(data) > MAX_DATAGRAM or len(data) < 12 or 200 <= data[1] <= 206:  # 2nd byte 200-206: RTCP
            self.dropped += 1
            return
        try:
            packet = RtpPacket.parse(data)
        except ValueError:
            self.dropped += 1
            return
        if not self._accept_source(packet, addr):
            self.dropped += 1
            return
        self.packets_in += 1
        now = time.monotonic()
        self.last_rx = now
        if packet.payload_type == self.dtmf_pt and self.dtmf_pt is not None:
            digit = self._dtmf_rx.push(packet.timestamp, packet.payload)
            if digit is not None:
                self.digits_in.append(digit)
                self.on_dtmf(digit)
        elif packet.payload_type in (g711.PCMU, g711.PCMA):
            for item in self.jitter.push(packet.sequence_number, packet.timestamp, packet.payload):
                pcm = (g711.decode(item.payload, packet.payload_type) if item.payload is not None
                       else np.zeros(item.samples, dtype=np.int16))
                self.on_audio(pcm, now)

    def _accept_source(self, packet: RtpPacket, addr: Address) -> bool:
        if self.latched == addr:
            return True
        if self.latched is None or packet.ssrc != self.remote_ssrc:
            if self.latched is not None:
                logger.info("rtp :%d: stream moved to %s:%d (new SSRC)", self.local_port, *addr)
            self.latched, self.remote_ssrc = addr, packet.ssrc
            self.jitter.reset()
            return True
        return False

    # -- outbound -----------------------------------------------------------------
    def send_dtmf(self, digits: str, tone_ms: int = 100) -> None:
        """Queue ``digits`` as RFC 4733 events (ValueError for a non-digit)."""
        self._dtmf_tx += dtmf.outgoing(digits, tone_ms)

    def send_audio(self, pcm: np.ndarray) -> None:
        """One 20 ms tick: a DTMF packet if one is due, else ``pcm`` (160 samples) encoded."""
        ts = self._ts
        self._ts = (self._ts + SAMPLES_PER_TICK) & 0xFFFFFFFF
        if self._dtmf_tx and self.dtmf_pt is not None:
            self._send_dtmf_tick(ts)
            return
        self._dtmf_tx.clear()  # no telephone-event negotiated: digits cannot be sent
        self._send(self.payload_type, g711.encode(pcm, self.payload_type), ts, marker=False)

    def _send_dtmf_tick(self, ts: int) -> None:
        event = self._dtmf_tx[0]
        if self._dtmf_ts is None:
            self._dtmf_ts = ts
        step = event.next_payload()
        if step is None:  # this digit is done; the next starts on the next tick
            self._dtmf_tx.pop(0)
            self._dtmf_ts = None
            self._send(self.payload_type, g711.silence(SAMPLES_PER_TICK, self.payload_type), ts, False)
            return
        payload, marker = step
        assert self.dtmf_pt is not None
        self._send(self.dtmf_pt, payload, self._dtmf_ts, marker)

    def _send(self, pt: int, payload: bytes, ts: int, marker: bool) -> None:
        target = self.latched or self.remote
        if not self.sending or target is None or self.transport is None:
            return
        self._seq = (self._seq + 1) & 0xFFFF
        packet = RtpPacket(payload_type=pt, marker=int(marker), sequence_number=self._seq,
                           timestamp=ts, ssrc=self.ssrc, payload=payload)
        self.transport.sendto(packet.serialize(), target)
        self.packets_out += 1

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable: the phone is gone or not yet up
        logger.debug("rtp :%d: %s", self.local_port, exc)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
