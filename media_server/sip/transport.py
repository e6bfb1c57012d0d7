"""SIP over UDP and TCP (RFC 3261 section 18): sockets in, whole messages out.

Both transports hand ``(bytes, source address, flow)`` to one callback; a *flow* is how a
response or an in-dialog request gets back (the UDP socket + address, or the very TCP
connection). TCP is a byte stream, so messages are framed by their Content-Length, with
the same size bound as a datagram; a peer that breaks the framing is answered 400 by the
core if possible and disconnected. Keep-alive CRLFs (RFC 5626) are skipped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

from media_server.sip.message import MAX_MESSAGE

logger = logging.getLogger(__name__)

Address = tuple[str, int]
MAX_TCP_CONNECTIONS = 256
TCP_IDLE_S = 300.0


class Flow:
    """Where to send something back: ``send`` never raises (a vanished peer is not an error)."""

    kind = "UDP"
    reliable = False

    def __init__(self, transport: asyncio.DatagramTransport, addr: Address) -> None:
        self._transport = transport
        self.addr = addr

    def send(self, data: bytes, addr: Address | None = None) -> None:
        if not self._transport.is_closing():
            self._transport.sendto(data, addr or self.addr)

    @property
    def open(self) -> bool:
        return not self._transport.is_closing()

    @property
    def local_port(self) -> int:
        """Our port on this flow: what Via and Contact must name so replies come back here."""
        return int(self._transport.get_extra_info("sockname")[1])


Handler = Callable[[bytes, Address, Flow], None]


class UdpListener(asyncio.DatagramProtocol):
    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint's transport

    def datagram_received(self, data: bytes, addr: Address) -> None:
        if data.strip(b"\r\n") == b"" or self.transport is None:
            return  # keep-alive
        self._handler(data, addr[:2], Flow(self.transport, addr[:2]))

    def error_received(self, exc: Exception) -> None:
        logger.debug("sip udp: %s", exc)


class TcpFlow(Flow):
    kind = "TCP"
    reliable = True

    def __init__(self, transport: asyncio.Transport, addr: Address) -> None:  # noqa: D107
        self._tcp = transport
        self.addr = addr

    def send(self, data: bytes, addr: Address | None = None) -> None:
        if not self._tcp.is_closing():
            self._tcp.write(data)

    @property
    def open(self) -> bool:
        return not self._tcp.is_closing()

    @property
    def local_port(self) -> int:
        return int(self._tcp.get_extra_info("sockname")[1])


class TcpConnection(asyncio.Protocol):
    """One TCP peer: frames messages by Content-Length (see module docstring)."""

    count = 0

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._buffer = bytearray()
        self._flow: TcpFlow | None = None
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        stream = cast(asyncio.Transport, transport)  # uvloop's is no asyncio.Transport subclass
        if TcpConnection.count >= MAX_TCP_CONNECTIONS:
            stream.close()
            return
        TcpConnection.count += 1
        self._flow = TcpFlow(stream, stream.get_extra_info("peername")[:2])
        self._touch()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._flow is not None:
            TcpConnection.count -= 1
            self._flow = None
        if self._idle is not None:
            self._idle.cancel()

    def _touch(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        if self._flow is not None:
            self._idle = asyncio.get_running_loop().call_later(TCP_IDLE_S, self._flow._tcp.close)

    def data_received(self, data: bytes) -> None:
        if self._flow is None:
            return
        self._buffer += data
        self._touch()
        while (message := self._next_message()) is not None:
            self._handler(message, self._flow.addr, self._flow)

    def _next_message(self) -> bytes | None:
        while self._buffer[:2] == b"\r\n":  # keep-alive
            del self._buffer[:2]
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_MESSAGE:
                self._abort()
            return None
        length = _content_length(bytes(self._buffer[:end]))
        if length is None or end + 4 + length > MAX_MESSAGE:
            # unframeable: give the core the head (it answers 400), then hang up
            head = bytes(self._buffer[: end + 4])
            self._abort()
            return head if length is None else None
        if len(self._buffer) < end + 4 + length:
            return None
        message = bytes(self._buffer[: end + 4 + length])
        del self._buffer[: end + 4 + length]
        return message

    def _abort(self) -> None:
        self._buffer.clear()
        if self._flow is not None:
            asyncio.get_running_loop().call_soon(self._flow._tcp.close)


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() in (b"content-length", b"l"):
            value = value.strip()
            return int(value) if value.isdigit() and len(value) <= 6 else None
    return None
