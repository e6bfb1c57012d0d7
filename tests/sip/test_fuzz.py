"""5 000 hostile SIP messages at the listener: it answers or drops each, and lives on.

Mutations of a real INVITE (the one sipp sends, with SDP): byte flips, truncations, huge
and numerous headers, bad Content-Length, bad SDP, non-UTF-8, missing headers, random
methods; a share goes over TCP. The node runs with no free call slots so that INVITEs that
survive mutation are answered (486) instead of starting 5 000 agents. Afterwards the
listener must still answer OPTIONS, no handler may have raised, and the memory the SIP
code holds must stay bounded (tracemalloc over the second half of the run).
"""

from __future__ import annotations

import asyncio
import random
import tracemalloc

import pytest

from tests.sip.conftest import SipNode

pytestmark = pytest.mark.asyncio(loop_scope="package")

MESSAGES = 5000
SDP = ("v=0\r\no=sipp 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       "m=audio 6000 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n")


def invite(i: int, port: int, body: str = SDP) -> bytes:
    return (
        f"INVITE sip:echo@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-fuzz-{i};rport\r\n"
        f"From: sipp <sip:sipp@127.0.0.1:5999>;tag=f{i}\r\n"
        f"To: <sip:echo@127.0.0.1:{port}>\r\n"
        f"Call-ID: fuzz-{i}@127.0.0.1\r\n"
        f"CSeq: 1 INVITE\r\n"
        f"Contact: <sip:sipp@127.0.0.1:5999>\r\n"
        f"Max-Forwards: 70\r\n"
        f"Content-Type: application/sdp\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


def mutate(rng: random.Random, i: int, port: int) -> bytes:
    data = invite(i, port)
    kind = rng.randrange(10)
    if kind == 0:  # byte flips
        raw = bytearray(data)
        for _ in range(rng.randint(1, 20)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        return bytes(raw)
    if kind == 1:  # truncation
        return data[: rng.randrange(len(data))]
    if kind == 2:  # a huge header
        return data.replace(b"Max-Forwards: 70", b"X-Big: " + b"A" * rng.choice([5000, 70000]))
    if kind == 3:  # very many headers
        return data.replace(b"Max-Forwards: 70\r\n", b"X-N: 1\r\n" * rng.choice([79, 500]))
    if kind == 4:  # bad SDP with a right Content-Length
        junk = rng.choice(["v=0\r\nm=audio x RTP/AVP\r\n", "garbage", "v=0\r\n" + "a=x\r\n" * 3000, SDP[:50]])
        return invite(i, port, junk)
    if kind == 5:  # lying Content-Length
        return data.replace(b"Content-Length: ", b"Content-Length: 9" if rng.random() < 0.5 else b"Content-Length: -")
    if kind == 6:  # a required header missing
        name = rng.choice([b"Via", b"From", b"To", b"Call-ID", b"CSeq"])
        lines = [ln for ln in data.split(b"\r\n") if not ln.startswith(name + b":")]
        return b"\r\n".join(lines)
    if kind == 7:  # other methods, in-dialog tags that match nothing
        method = rng.choice([b"BYE", b"CANCEL", b"ACK", b"OPTIONS", b"REGISTER", b"FOO"])
        return data.replace(b"INVITE", method).replace(b"<sip:echo@127.0.0.1", b"<sip:echo@127.0.0.1", 1)
    if kind == 8:  # non-UTF-8 and control characters
        return data.replace(b"sipp <", b"\xff\xfe\x00 <")
    return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))  # noise


class Sink(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.responses: list[bytes] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.responses.append(data)


async def test_fuzzed_messages_never_kill_the_listener(sip_node: SipNode) -> None:
    sip, port = sip_node.sip, sip_node.sip.port
    rng = random.Random(13)
    loop = asyncio.get_running_loop()
    transport, sink = await loop.create_datagram_endpoint(Sink, remote_addr=("127.0.0.1", port))
    errors, malformed = sip.stats["errors"], sip.stats["malformed"]
    tracemalloc.start()
    try:
        with sip_node.tuned(max_calls=0):
            for i in range(MESSAGES):
                if i == MESSAGES // 2:
                    await asyncio.sleep(0.2)
                    half = tracemalloc.get_traced_memory()[0]
                data = mutate(rng, i, port)
                if i % 10 == 0:
                    await send_tcp(port, data)
                else:
                    transport.sendto(data[:65507])
                if i % 25 == 0:
                    await asyncio.sleep(0.002)  # let the listener (same loop) keep up
            await asyncio.sleep(0.5)
            grown = tracemalloc.get_traced_memory()[0] - half
    finally:
        tracemalloc.stop()
    sink.responses.clear()
    transport.sendto(b"OPTIONS sip:echo@127.0.0.1 SIP/2.0\r\n"
                     b"Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-alive;rport\r\n"
                     b"From: <sip:a@b>;tag=1\r\nTo: <sip:echo@127.0.0.1>\r\nCall-ID: alive\r\nCSeq: 1 OPTIONS\r\n"
                     b"Content-Length: 0\r\n\r\n")
    alive = [b""]
    for _ in range(100):
        alive = [r for r in sink.responses if b"Call-ID: alive" in r] or alive
        if alive[0]:
            break
        await asyncio.sleep(0.02)
    transport.close()
    print(f"fuzz: {sip.stats['malformed'] - malformed} malformed of {MESSAGES}; "
          f"traced memory grew {grown / 1e6:.2f} MB over the second half")
    assert alive[0].startswith(b"SIP/2.0 200 OK"), "the listener is gone"
    assert sip.stats["errors"] == errors, "a handler raised"
    assert sip.stats["malformed"] - malformed > MESSAGES // 3
    assert not sip.pending and not sip.dialogs
    assert len(sip.transactions) <= 4096 and len(sip.error_resenders) <= 1024
    assert grown < 4e6, f"memory grew {grown / 1e6:.1f} MB over 2 500 messages"


async def send_tcp(port: int, data: bytes) -> None:
    """One message over a fresh TCP connection, closed at once (the answer is not awaited)."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass
