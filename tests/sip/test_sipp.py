"""sipp (Debian sip-tester) as the caller, against a real Parley server on loopback."""

from __future__ import annotations

import asyncio
import ipaddress
import re
from pathlib import Path

import pytest

from media_server.sip.auth import DigestAuth
from signaling.keys import CALLS
from tests.sip.conftest import SipNode, run_sipp

pytestmark = pytest.mark.asyncio(loop_scope="package")


def received(messages: str, start_line: str, cseq: str) -> int:
    """How many messages sipp logged receiving that start with ``start_line`` with ``cseq``."""
    parts = re.split(r"(?:UDP|TCP) message (received|sent) \[\d+\] bytes :", messages)
    pairs = zip(parts[1::2], parts[2::2], strict=True)
    return sum(1 for kind, body in pairs
               if kind == "received" and body.strip().startswith(start_line) and f"CSeq: {cseq}" in body)


async def test_g711_call_with_dtmf(sip_node: SipNode, tmp_path: Path) -> None:
    sip = sip_node.sip
    run = await run_sipp("call_g711.xml", sip.port, tmp_path, timeout_s=25)
    assert run.returncode == 0, run.output
    call = sip.finished[-1]
    assert call.payload_type == 8  # PCMA: the first codec sipp offered
    assert call.packets_in > 230  # 7 s of 30 ms packets, and the digits
    assert call.packets_out > 350  # 20 ms packets all along: silence, then the echo
    history = call.events
    assert [e["digit"] for _, e in history.of_type("dtmf")] == ["#", "1"]
    t_pound = history.of_type("dtmf")[0][0]
    replies = [t - t_pound for t, _ in history.of_type("tts-start")]
    print(f"'#' -> reply started after {[round(dt * 1000) for dt in replies if dt >= 0]} ms")
    # '#' ends the turn at once (the echo starts); silence alone would take 1.5 s here
    assert any(0 <= dt < 0.5 for dt in replies), (replies, [e for _, e in history.history])
    assert call.remote_bye and call.id not in sip.by_call and sip.stats["errors"] == 0
    for _ in range(40):  # the BYE was answered; the call closes right after
        if call.id not in sip_node.runner.app[CALLS].calls:
            break
        await asyncio.sleep(0.05)
    assert call.id not in sip_node.runner.app[CALLS].calls


async def test_lost_ack_gets_the_200_again_until_the_ack(sip_node: SipNode, tmp_path: Path) -> None:
    sip = sip_node.sip
    run = await run_sipp("lost_ack.xml", sip.port, tmp_path, timeout_s=15)
    assert run.returncode == 0, run.output
    # sent at 0, then T1 = 0.5 s and 1.5 s while the ACK is held back 2.5 s; not at 3.5 s: the ACK came
    assert received(run.messages, "SIP/2.0 200 OK", "1 INVITE") == 3, run.messages[-4000:]
    assert sip.finished[-1].remote_bye


async def test_cancel_while_ringing_gets_487(sip_node: SipNode, tmp_path: Path) -> None:
    sip = sip_node.sip
    before, waiting = len(sip.finished), set(sip.error_resenders)
    with sip_node.tuned(sip_ring_ms=3000):
        run = await run_sipp("cancel.xml", sip.port, tmp_path, timeout_s=15)
    assert run.returncode == 0, run.output
    assert received(run.messages, "SIP/2.0 487", "1 INVITE") == 1  # its ACK stopped the retransmits
    assert not sip.pending and not sip_node.runner.app[CALLS].calls
    assert set(sip.error_resenders) <= waiting  # the 487 is no longer resent
    assert len(sip.finished) == before  # no call was ever started


async def test_malformed_and_unroutable_requests(sip_node: SipNode, tmp_path: Path) -> None:
    sip = sip_node.sip
    malformed = sip.stats["malformed"]
    run = await run_sipp("malformed.xml", sip.port, tmp_path, timeout_s=15)
    assert run.returncode == 0, run.output
    assert sip.stats["malformed"] - malformed == 2 and sip.stats["errors"] == 0


async def test_tcp_call_with_hold_and_resume(sip_node: SipNode, tmp_path: Path) -> None:
    sip = sip_node.sip
    samples: list[tuple[bool, int]] = []

    async def watch() -> None:  # what the RTP leg does while sipp holds and resumes
        while True:
            for state in list(sip.dialogs.values()):
                samples.append((state.call.leg.sending, state.call.leg.packets_out))
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    try:
        run = await run_sipp("tcp_hold.xml", sip.port, tmp_path, timeout_s=15, extra=("-t", "t1"))
    finally:
        watcher.cancel()
    assert run.returncode == 0, run.output  # the scenario checks a=recvonly on hold, a=sendrecv on resume
    assert "Contact: <sip:parley@127.0.0.1:" in run.messages and ";transport=tcp>" in run.messages
    assert received(run.messages, "SIP/2.0 200 OK", "1 INVITE") == 1  # TCP is reliable: no resends
    held = [out for sending, out in samples if not sending]
    assert held and held[-1] == held[0], "RTP was sent while the call was on hold"
    resumed = [out for sending, out in samples if sending and out > held[-1]]
    assert resumed, "RTP did not resume"


async def test_digest_auth(sip_node: SipNode, tmp_path: Path) -> None:
    sip = sip_node.sip
    sip.auth = DigestAuth({"alice": "secret"})
    try:
        run = await run_sipp("auth.xml", sip.port, tmp_path, timeout_s=15)
    finally:
        sip.auth = None
    assert run.returncode == 0, run.output
    assert received(run.messages, "SIP/2.0 401", "1 INVITE") == 1
    assert received(run.messages, "SIP/2.0 200 OK", "2 INVITE") >= 1


async def test_sources_outside_the_allow_list_get_403(sip_node: SipNode, tmp_path: Path) -> None:
    sip = sip_node.sip
    sip.allow = [ipaddress.ip_network("10.0.0.0/8")]
    try:
        run = await run_sipp("forbidden.xml", sip.port, tmp_path, timeout_s=10)
    finally:
        sip.allow = []
    assert run.returncode == 0, run.output


async def test_invite_without_sdp_gets_our_offer_and_the_ack_answers(sip_node: SipNode, tmp_path: Path) -> None:
    sip = sip_node.sip
    run = await run_sipp("late_offer.xml", sip.port, tmp_path, timeout_s=10)
    assert run.returncode == 0, run.output  # the scenario checks the offer in the 200 OK
    call = sip.finished[-1]
    assert call.payload_type == 0 and call.packets_out > 20  # PCMU from the ACK's answer
    assert [e["digit"] for _, e in call.events.of_type("dtmf")] == ["5"]
