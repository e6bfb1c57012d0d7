"""The I/O-free SIP/RTP pieces, message by message and packet by packet."""

from __future__ import annotations

import numpy as np
import pytest

from media_server.sip import dtmf, g711, message, sdp
from media_server.sip.auth import DigestAuth, _md5, parse_users
from media_server.sip.jitter import JitterBuffer
from media_server.sip.routing import Route, route
from media_server.sip.transaction import T1, T2, Retransmit, ServerTransactions, Step

INVITE = (
    b"INVITE sip:socrates@10.0.0.1:5060 SIP/2.0\r\n"
    b"v: SIP/2.0/UDP 10.0.0.2:5062;branch=z9hG4bK-1;rport\r\n"
    b"Via: SIP/2.0/UDP proxy.example;branch=z9hG4bK-0\r\n"
    b'f: "Alice" <sip:alice@example.com>;tag=a1\r\n'
    b"t: <sip:socrates@10.0.0.1>\r\n"
    b"i: call-1@10.0.0.2\r\n"
    b"CSeq: 7 INVITE\r\n"
    b"Subject: a long\r\n  folded header\r\n"
    b"c: application/sdp\r\n"
    b"l: 5\r\n\r\nv=0\r\nEXTRA"
)


def test_parse_expands_compact_forms_unfolds_and_trims_the_body() -> None:
    msg = message.parse(INVITE)
    assert (msg.method, msg.uri) == ("INVITE", "sip:socrates@10.0.0.1:5060")
    assert (msg.call_id, msg.cseq) == ("call-1@10.0.0.2", (7, "INVITE"))
    assert len(msg.get_all("Via")) == 2 and msg.get("Subject") == "a long folded header"
    assert msg.body == b"v=0\r\n"
    assert message.name_addr(msg.get("From") or "").tag == "a1"
    via = message.parse_via(msg.get_all("Via")[0])
    assert (via.host, via.port, via.branch, "rport" in via.params) == ("10.0.0.2", 5062, "z9hG4bK-1", True)
    assert message.parse(msg.to_bytes()).to_bytes() == msg.to_bytes()


@pytest.mark.parametrize("data", [
    INVITE.replace(b"i: call-1@10.0.0.2\r\n", b""),  # no Call-ID
    INVITE.replace(b"CSeq: 7 INVITE", b"CSeq: 7 BYE"),  # CSeq method differs
    INVITE.replace(b"l: 5", b"l: 500"),  # body shorter than Content-Length
    INVITE.replace(b"l: 5", b"l: -1"),
    INVITE.replace(b" SIP/2.0\r\n", b" SIP/3.0\r\n", 1),
    INVITE.replace(b"Subject: a long", b"Subject a long"),  # no colon
    INVITE[:40],  # truncated
    INVITE.replace(b"Alice", b"\xff\xfe"),  # not UTF-8
    INVITE.replace(b"CSeq: 7", b"CSeq: " + b"9" * 12),
    b"X-Big: " + b"a" * 70000 + b"\r\n\r\n",
    INVITE.replace(b"c: application/sdp\r\n", b"".join(b"X-H%d: 1\r\n" % i for i in range(100))),
])
def test_malformed_or_oversize_messages_raise_parse_error_only(data: bytes) -> None:
    with pytest.raises(message.SipParseError):
        message.parse(data)


def test_tcp_needs_content_length() -> None:
    with pytest.raises(message.SipParseError):
        message.parse(INVITE.replace(b"l: 5\r\n", b"X: y\r\n"), stream=True)


def test_g711_matches_the_standard_tables_and_round_trips() -> None:
    codes = bytes(range(256))
    for pt in (g711.PCMU, g711.PCMA):
        assert g711.encode(g711.decode(codes, pt), pt).replace(b"\x7f", b"\xff") == codes.replace(b"\x7f", b"\xff")
    # known points (ITU-T G.711): A-law 0 -> 0xD5, mu-law 0 -> 0xFF, full scale -> 0x80 / 0xAA
    assert g711.encode(np.array([0, 32767], np.int16), g711.PCMU) == b"\xff\x80"
    assert g711.encode(np.array([0, 32767], np.int16), g711.PCMA) == b"\xd5\xaa"
    tone = (np.sin(np.arange(800) / 8000 * 2 * np.pi * 440) * 16000).astype(np.int16)
    back = g711.decode(g711.encode(tone, g711.PCMU), g711.PCMU).astype(float)
    snr = 10 * np.log10((tone.astype(float) ** 2).sum() / ((back - tone) ** 2).sum())
    assert snr > 35  # ~38 dB is what 8-bit log PCM gives


OFFER = b"v=0\r\no=- 1 1 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\n" \
        b"m=audio 4000 RTP/AVP 18 8 0 96\r\na=rtpmap:96 telephone-event/8000\r\na=ptime:30\r\n"


def test_sdp_answer_picks_the_first_g711_and_telephone_event() -> None:
    offer = sdp.parse(OFFER)
    assert (offer.address, offer.port, offer.codec(), offer.dtmf_pt(), offer.ptime) == ("10.0.0.2", 4000, 8, 96, 30)
    answer = sdp.LocalMedia("10.0.0.1", 5000).answer(offer).decode()
    assert "m=audio 5000 RTP/AVP 8 96\r\n" in answer and "a=ptime:20" in answer and "a=sendrecv" in answer
    held = sdp.parse(OFFER + b"a=sendonly\r\n")
    assert held.on_hold and "a=recvonly" in sdp.LocalMedia("10.0.0.1", 5000).answer(held).decode()


@pytest.mark.parametrize("body", [
    b"", b"v=1\r\n", OFFER.replace(b"8 0 96", b"18"), OFFER.replace(b"RTP/AVP", b"RTP/SAVP"),
    OFFER.replace(b"c=IN IP4 10.0.0.2\r\n", b""), OFFER.replace(b"m=audio 4000", b"m=audio x"),
])
def test_unusable_sdp_is_an_sdp_error(body: bytes) -> None:
    with pytest.raises(sdp.SdpError):
        sdp.parse(body).codec()


def test_jitter_buffer_reorders_and_turns_loss_into_silence() -> None:
    jb = JitterBuffer(depth=2)
    out = jb.push(10, 0, b"a" * 160) + jb.push(12, 320, b"c" * 160) + jb.push(11, 160, b"b" * 160)
    assert [r.payload[:1] for r in out if r.payload] == [b"a", b"b", b"c"]
    out = jb.push(14, 640, b"e" * 160) + jb.push(15, 800, b"f" * 160) + jb.push(16, 960, b"g" * 160)
    assert [(r.payload or b"-")[:1] for r in out] == [b"-", b"e", b"f", b"g"] and out[0].samples == 160
    assert jb.lost == 1 and jb.push(12, 320, b"c" * 160) == [] and jb.late == 1
    wrap = JitterBuffer()
    assert len(wrap.push(65535, 0, b"x") + wrap.push(0, 1, b"y")) == 2  # sequence wrap-around


def test_dtmf_receiver_reports_each_event_once_and_sender_ends_three_times() -> None:
    rx = dtmf.DtmfReceiver()
    packets = [dtmf.pack(11, False, 10, d) for d in (160, 320)] + [dtmf.pack(11, True, 10, 480)] * 3
    assert [rx.push(1000, p) for p in packets] == ["#", None, None, None, None]
    assert rx.push(2000, dtmf.pack(1, False, 10, 160)) == "1"
    (event,) = dtmf.outgoing("5", tone_ms=60)
    steps = []
    while (step := event.next_payload()) is not None:
        steps.append(dtmf.parse(step[0]))
    assert [s.end for s in steps] == [False] * 3 + [True] * 3 and all(s.digit == "5" for s in steps)
    with pytest.raises(ValueError):
        dtmf.outgoing("x")


def test_retransmit_follows_t1_doubling_to_t2_and_times_out_at_64_t1() -> None:
    rt = Retransmit(0.0)
    sends, t = [], 0.0
    while (step := rt.poll(t)) is not Step.TIMEOUT:
        if step is Step.SEND:
            sends.append(t)
        t = rt.next_at
    assert sends[:5] == [T1, 3 * T1, 7 * T1, 7 * T1 + T2, 7 * T1 + 2 * T2] and t == 64 * T1
    reliable = Retransmit(0.0, reliable=True)
    assert reliable.poll(10.0) is Step.WAIT and reliable.poll(64 * T1) is Step.TIMEOUT


def test_server_transactions_absorb_retransmissions_and_stay_bounded() -> None:
    tx = ServerTransactions(linger=1.0, capacity=3)
    key = tx.key("z9hG4bK-1", "INVITE", "c", 1)
    assert tx.seen(key, 0.0) is None
    tx.begin(key, 0.0)
    tx.respond(key, b"SIP/2.0 200 OK", 0.0)
    assert tx.seen(key, 0.5).response == b"SIP/2.0 200 OK"  # type: ignore[union-attr]
    assert tx.seen(key, 2.0) is None  # expired
    for i in range(10):
        tx.begin(tx.key(f"z9hG4bK-{i}", "INVITE", "c", i), 3.0)
    assert len(tx) == 3


def test_digest_auth_accepts_the_right_password_only() -> None:
    auth = DigestAuth(parse_users("alice:secret"))
    nonce = auth.challenge(now=1000.0).split('nonce="')[1].split('"')[0]
    ha1, ha2 = _md5("alice:parley:secret"), _md5("INVITE:sip:echo@h")
    good = _md5(f"{ha1}:{nonce}:00000001:c0:auth:{ha2}")
    header = f'Digest username="alice", realm="parley", nonce="{nonce}", uri="sip:echo@h", ' \
             f'response="{good}", qop=auth, nc=00000001, cnonce="c0"'
    assert auth.verify(header, "INVITE", now=1001.0) == "alice"
    assert auth.verify(header.replace(good, "0" * 32), "INVITE", now=1001.0) is None
    assert auth.verify(header, "INVITE", now=2000.0) is None  # stale nonce
    with pytest.raises(ValueError):
        parse_users("nopassword")


def test_routing() -> None:
    personas = {"echo", "socrates"}
    assert route("socrates", personas, "echo") == Route("persona", "socrates")
    assert route("room-abc", personas, "echo") == Route("room", "abc")
    assert route("+4930123", personas, "echo") == Route("persona", "echo")
    assert route("nobody", personas, "echo") is None
