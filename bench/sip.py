"""SIP benchmark: echo calls per worker at <= 0.5 % late RTP, and turn latency SIP vs WebRTC.

A served node (``parley serve --sip-port``) answers both transports. The SIP side of the
client is a small probe built from Parley's own SIP modules (INVITE, ACK, BYE over UDP and
G.711 mu-law RTP paced on a monotonic clock); the WebRTC side is ``parley.call.client``.

- Turn latency, on the same utterance (espeak-ng; the SIP copy is the same audio taken to
  8 kHz): end of speech sent -> first voiced reply packet/frame received, echo persona, so
  the figure is transport + DSP + turn taking, not model time.
- Capacity: N concurrent SIP echo calls, each repeating the utterance; a step passes while
  the server's paced tracks send <= 0.5 % of frames late (``parley_frames_late_total``).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import secrets
import statistics
import subprocess
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np
from aiortc.rtp import RtpPacket

from bench.serverproc import free_port, parley_servers, scrape
from media_server.sip import g711, message, sdp
from pipeline.audio import RATE, resample, rms_dbfs

LATE_LIMIT = 0.005
COUNTERS = ("parley_frames_sent_total", "parley_frames_late_total")
SENTENCE = "The quick brown fox jumps over the lazy dog."
VOICED_DBFS = -40.0


class SipProbe(asyncio.DatagramProtocol):
    """A bare SIP UA + RTP endpoint on two UDP sockets, enough for an echo call."""

    def __init__(self) -> None:
        self.responses: asyncio.Queue[message.SipMessage] = asyncio.Queue()
        self.rtp_in: list[tuple[float, np.ndarray]] = []
        self.sip: Any = None
        self.rtp: Any = None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self.sip, _ = await loop.create_datagram_endpoint(lambda: _Sink(self._on_sip), local_addr=("127.0.0.1", 0))
        self.rtp, _ = await loop.create_datagram_endpoint(lambda: _Sink(self._on_rtp), local_addr=("127.0.0.1", 0))

    def _on_sip(self, data: bytes) -> None:
        try:
            msg = message.parse(data)
        except message.SipParseError:
            return
        if not msg.is_request:
            self.responses.put_nowait(msg)

    def _on_rtp(self, data: bytes) -> None:
        packet = RtpPacket.parse(data)
        if packet.payload_type == g711.PCMU:
            self.rtp_in.append((time.monotonic(), g711.decode(packet.payload, g711.PCMU)))

    async def call(self, port: int, persona: str = "echo") -> tuple[str, int]:
        """INVITE -> 200 -> ACK; returns the server's RTP address."""
        rtp_port = self.rtp.get_extra_info("sockname")[1]
        self.call_id, self.tag, self.port = secrets.token_hex(8), secrets.token_hex(4), port
        offer = sdp.LocalMedia("127.0.0.1", rtp_port).describe([g711.PCMU], None)
        self._send("INVITE", 1, offer)
        while True:
            res = await asyncio.wait_for(self.responses.get(), 10)
            if res.status >= 200:
                break
        if res.status != 200:
            raise RuntimeError(f"INVITE answered {res.status}")
        self.to = res.get("To") or ""
        self._send("ACK", 1)
        media = sdp.parse(res.body)
        self.remote = (media.address, media.port)
        self._seq, self._ts, self._ssrc = 0, 0, secrets.randbits(32)
        return self.remote

    def _send(self, method: str, cseq: int, body: bytes = b"") -> None:
        sip_port = self.sip.get_extra_info("sockname")[1]
        msg = message.SipMessage(method=method, uri=f"sip:echo@127.0.0.1:{self.port}", body=body)
        msg.add("Via", f"SIP/2.0/UDP 127.0.0.1:{sip_port};branch=z9hG4bK{secrets.token_hex(6)};rport")
        msg.add("From", f"<sip:bench@127.0.0.1>;tag={self.tag}")
        msg.add("To", getattr(self, "to", "") or f"<sip:echo@127.0.0.1:{self.port}>")
        msg.add("Call-ID", self.call_id)
        msg.add("CSeq", f"{cseq} {method}")
        msg.add("Contact", f"<sip:bench@127.0.0.1:{sip_port}>")
        if body:
            msg.add("Content-Type", "application/sdp")
        self.sip.sendto(msg.to_bytes(), ("127.0.0.1", self.port))

    async def say(self, pcm8k: np.ndarray) -> float:
        """Send ``pcm8k`` as 20 ms PCMU packets in real time; returns the monotonic start time."""
        t0 = time.monotonic()
        for i in range(0, pcm8k.size - 159, 160):
            delay = t0 + i / 8000 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self._seq = (self._seq + 1) & 0xFFFF
            self._ts = (self._ts + 160) & 0xFFFFFFFF
            packet = RtpPacket(payload_type=g711.PCMU, sequence_number=self._seq, timestamp=self._ts,
                               ssrc=self._ssrc, payload=g711.encode(pcm8k[i:i + 160], g711.PCMU))
            self.rtp.sendto(packet.serialize(), self.remote)
        return t0

    def first_voiced_after(self, t: float) -> float | None:
        for arrival, pcm in self.rtp_in:
            if arrival >= t and rms_dbfs(pcm) > VOICED_DBFS:
                return arrival
        return None

    async def hangup(self) -> None:
        self._send("BYE", 2)
        await asyncio.sleep(0.1)
        self.sip.close()
        self.rtp.close()


class _Sink(asyncio.DatagramProtocol):
    def __init__(self, handler: Any) -> None:
        self._handler = handler

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._handler(data)


def _utterance(directory: Path) -> np.ndarray:
    path = directory / "utterance.wav"
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(path), SENTENCE], check=True)
    with wave.open(str(path), "rb") as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return resample(pcm, w.getframerate(), RATE)


def _speech_end(pcm: np.ndarray, rate: int) -> float:
    frame = rate // 100
    loud = [i for i in range(pcm.size // frame) if rms_dbfs(pcm[i * frame:(i + 1) * frame]) > VOICED_DBFS]
    return (loud[-1] + 1) * frame / rate


async def _sip_turn(port: int, pcm48: np.ndarray) -> float:
    pcm8 = resample(np.concatenate([pcm48, np.zeros(RATE * 3, np.int16)]), RATE, 8000)
    probe = SipProbe()
    await probe.open()
    await probe.call(port)
    await asyncio.sleep(1.5)  # past the echo canceller's start-up, as on WebRTC below
    t0 = await probe.say(pcm8)
    t_end = t0 + _speech_end(pcm8, 8000)
    reply = probe.first_voiced_after(t_end)
    for _ in range(100):  # a busy machine can take longer than the trailing silence
        if reply is not None:
            break
        await asyncio.sleep(0.1)
        reply = probe.first_voiced_after(t_end)
    await probe.hangup()
    if reply is None:
        raise RuntimeError("no voiced reply over SIP")
    return (reply - t_end) * 1000


async def _webrtc_turn(url: str, pcm48: np.ndarray) -> float:
    from parley.call.client import CallClient, speech_end_offset

    async with CallClient(url, "echo") as client:
        await asyncio.sleep(1.5)
        playback = client.say(np.concatenate([pcm48, np.zeros(RATE, np.int16)]))
        await playback.done
        t_end = (playback.started_at or time.monotonic()) + speech_end_offset(pcm48)
        await client.wait_event(lambda e: e["type"] == "tts-start", timeout=15)
        for _ in range(300):
            voiced = client.voiced_between(t_end)
            if voiced:
                return (voiced[0].t - t_end) * 1000
            await asyncio.sleep(0.01)
    raise RuntimeError("no voiced reply over WebRTC")


async def _latency(url: str, sip_port: int, pcm48: np.ndarray, turns: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"sip": [], "webrtc": []}
    for i in range(turns):
        out["sip"].append(round(await _sip_turn(sip_port, pcm48), 1))
        out["webrtc"].append(round(await _webrtc_turn(url, pcm48), 1))
        print(f"   turn {i + 1}: sip {out['sip'][-1]} ms, webrtc {out['webrtc'][-1]} ms", flush=True)
    return out


async def _talk(port: int, pcm48: np.ndarray, seconds: float) -> int:
    pcm8 = resample(np.concatenate([pcm48, np.zeros(RATE * 2, np.int16)]), RATE, 8000)
    probe = SipProbe()
    await probe.open()
    await probe.call(port)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        await probe.say(pcm8)
    await probe.hangup()
    return len(probe.rtp_in)


def _client_proc(port: int, pcm48: np.ndarray, calls: int, seconds: float, queue: Any) -> None:
    async def main() -> list[Any]:
        return await asyncio.gather(*(_talk(port, pcm48, seconds) for _ in range(calls)), return_exceptions=True)

    queue.put([r if isinstance(r, int) else repr(r) for r in asyncio.run(main())])


def _step(url: str, port: int, pcm48: np.ndarray, calls: int, seconds: float) -> dict[str, Any]:
    before = scrape(url, COUNTERS)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_client_proc, args=(port, pcm48, calls, seconds, queue))
    proc.start()
    results = queue.get(timeout=seconds + 60)
    proc.join(timeout=10)
    after = scrape(url, COUNTERS)
    sent = after[COUNTERS[0]] - before[COUNTERS[0]]
    late = after[COUNTERS[1]] - before[COUNTERS[1]]
    return {"calls": calls, "frames_sent": sent, "late_ratio": late / sent if sent else 1.0,
            "failed_calls": sum(1 for r in results if not isinstance(r, int))}


def _webrtc_late_ratio(url: str, seconds: float) -> float:
    """Late-frame share of one WebRTC echo call (the capacity bench's load generator) on ``url``."""
    from bench.capacity import client_process

    ctx = multiprocessing.get_context("spawn")
    queue, stop = ctx.Queue(), ctx.Event()
    client = ctx.Process(target=client_process, args=(url, 1, queue, stop))
    client.start()
    try:
        queue.get(timeout=120)  # the call is up
        before = scrape(url, COUNTERS)
        time.sleep(seconds)
        after = scrape(url, COUNTERS)
    finally:
        stop.set()
    queue.get(timeout=120)
    client.join(timeout=30)
    sent = after[COUNTERS[0]] - before[COUNTERS[0]]
    return (after[COUNTERS[1]] - before[COUNTERS[1]]) / sent if sent else 1.0


def _same_conditions(url: str, sip_port: int, pcm48: np.ndarray, seconds: float) -> dict[str, float]:
    """One echo call over each transport, back to back on the same server: on a shared,
    busy machine the absolute late ratio says more about the neighbours than about Parley,
    the ratio between the two says what the transport costs."""
    webrtc = _webrtc_late_ratio(url, seconds)
    over_sip = _step(url, sip_port, pcm48, 1, seconds)["late_ratio"]
    print(f"   one call: late {over_sip:.2%} over SIP, {webrtc:.2%} over WebRTC", flush=True)
    return {"late_ratio_1_call_sip": round(over_sip, 4), "late_ratio_1_call_webrtc": round(webrtc, 4)}


def run(out_dir: Path, quick: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        pcm48 = _utterance(Path(tmp))
    sip_port = free_port()
    env = {"PARLEY_SIP_PORT": str(sip_port), "PARLEY_PERSONA": "echo"}
    with parley_servers(1, env=env) as (url,):
        latency = asyncio.run(_latency(url, sip_port, pcm48, 2 if quick else 6))
        same = _same_conditions(url, sip_port, pcm48, 8.0 if quick else 15.0)
        points = []
        for calls in ([1, 2] if quick else [1, 2, 4, 6, 8, 10]):
            point = _step(url, sip_port, pcm48, calls, 8.0 if quick else 15.0)
            points.append(point)
            print(f"   sip calls={calls}: late {point['late_ratio']:.2%}, failed {point['failed_calls']}", flush=True)
            if point["late_ratio"] > LATE_LIMIT or point["failed_calls"]:
                break
    ok = [p["calls"] for p in points if p["late_ratio"] <= LATE_LIMIT and not p["failed_calls"]]
    summary = {
        "sip_calls_per_worker": max(ok, default=0),
        "turn_ms_sip_median": round(statistics.median(latency["sip"]), 1),
        "turn_ms_webrtc_median": round(statistics.median(latency["webrtc"]), 1),
    }
    summary["sip_minus_webrtc_ms"] = round(summary["turn_ms_sip_median"] - summary["turn_ms_webrtc_median"], 1)
    summary.update(same)
    result = {"summary": summary, "latency_ms": latency, "capacity": points, "late_limit": LATE_LIMIT,
              "note": "echo persona; clients on the same 2-core machine as the server"}
    (out_dir / "sip.json").write_text(json.dumps(result, indent=1))
    _plot(result, out_dir / "sip.png")
    return result


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    points = result["capacity"]
    left.plot([p["calls"] for p in points], [100 * p["late_ratio"] for p in points], marker="o")
    left.axhline(100 * LATE_LIMIT, color="red", linestyle="--", label="0.5 % limit")
    left.set_xlabel("concurrent SIP echo calls")
    left.set_ylabel("late outbound frames (%)")
    left.legend()
    lat = result["latency_ms"]
    right.boxplot([lat["sip"], lat["webrtc"]], tick_labels=["SIP (G.711)", "WebRTC (Opus)"])
    right.set_ylabel("turn latency (ms): end of speech -> first reply audio")
    right.set_title("same utterance, echo persona", fontsize=9)
    fig.suptitle("Parley over SIP (this shared 2-core machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

