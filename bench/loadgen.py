"""A cheap load generator: WHIP callers that replay pre-encoded Opus packets.

Every simulated caller sends the same speech loop, encoded once before the run and replayed
as ``av.Packet``s on an absolute 20 ms schedule — no per-call encoding, so the client side
costs as little CPU as an aiortc peer can and disturbs the server under test less. Each
caller reads (and counts) what comes back; the server's own CPU is measured from ``/proc``
by the benchmark, not here.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from media_server.encoded import OpusPackets
from pipeline.audio import FRAME_20MS, RATE

TIME_BASE = fractions.Fraction(1, RATE)
LATE_S = 0.04


def speech_loop() -> list[bytes]:
    """1.5 s of speech-like harmonics with a syllable envelope, then 1 s of silence, as Opus."""
    t = np.arange(int(1.5 * RATE)) / RATE
    voice = sum(np.sin(2 * np.pi * f * t) / (i + 1) for i, f in enumerate((140, 280, 420, 700, 1100)))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t)) ** 2 / 4
    pcm = np.concatenate(((voice * envelope * 6000).astype(np.int16), np.zeros(RATE, np.int16)))
    encoder = OpusPackets()
    frames = pcm.reshape(-1, FRAME_20MS)
    return [bytes(encoder.packet(f, i * FRAME_20MS, silent=not f.any())) for i, f in enumerate(frames)]


class ReplayTrack(MediaStreamTrack):
    """Sends ``payloads`` round and round, paced on ``time.monotonic()``."""

    kind = "audio"

    def __init__(self, payloads: list[bytes]) -> None:
        super().__init__()
        self._payloads = payloads
        self._t0: float | None = None
        self._n = 0

    async def recv(self) -> av.Packet:
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
        deadline = self._t0 + self._n * FRAME_20MS / RATE
        if deadline > now:
            await asyncio.sleep(deadline - now)
        packet = av.Packet(self._payloads[self._n % len(self._payloads)])
        packet.pts = self._n * FRAME_20MS
        packet.time_base = TIME_BASE
        self._n += 1
        return packet


@dataclass
class CallStats:
    received: int = 0
    late: int = 0
    failed: bool = False
    first_frame: asyncio.Event = field(default_factory=asyncio.Event)


async def _count(track: MediaStreamTrack, stats: CallStats) -> None:
    base: float | None = None
    with contextlib.suppress(MediaStreamError):
        while True:
            frame = await track.recv()
            stats.received += 1
            stats.first_frame.set()
            offset = time.monotonic() - (frame.pts or 0) / RATE
            base = offset if base is None else min(base, offset)
            stats.late += offset - base > LATE_S


async def call(http: aiohttp.ClientSession, url: str, payloads: list[bytes], stop: asyncio.Event,
               connected: asyncio.Event | None = None, connect_timeout: float = 45.0) -> CallStats:
    """One WHIP call to ``url`` (``/whip`` on Parley or the relay), held until ``stop`` is set.

    ``connected`` is set once the server's audio arrives (media flows both ways)."""
    stats = CallStats()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    tasks: list[asyncio.Task[None]] = []
    pc.on("track", lambda track: tasks.append(asyncio.ensure_future(_count(track, stats))))
    pc.addTrack(ReplayTrack(payloads))
    try:
        await pc.setLocalDescription(await pc.createOffer())
        async with http.post(f"{url}/whip?persona=echo", data=pc.localDescription.sdp,
                             headers={"Content-Type": "application/sdp"}) as r:
            answer = await r.text()
            if r.status != 201:
                stats.failed = True
                return stats
            location = r.headers.get("Location", "")
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        try:
            await asyncio.wait_for(stats.first_frame.wait(), connect_timeout)
        except TimeoutError:
            stats.failed = True
        if connected is not None:
            connected.set()
        await stop.wait()
        with contextlib.suppress(aiohttp.ClientError):
            async with http.delete(url + location):
                pass
    except (aiohttp.ClientError, TimeoutError, ValueError):
        stats.failed = True
    finally:
        if connected is not None:
            connected.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await pc.close()
    return stats


async def run_calls(url: str, calls: int, on_ready: Callable[[int], None], stop: Callable[[], Awaitable[None]],
                    ramp_s: float = 0.05) -> list[CallStats]:
    """``calls`` concurrent callers: ``on_ready(connected)`` once every call is up (or failed),
    then they talk until ``stop()`` returns."""
    payloads = speech_loop()
    ended = asyncio.Event()
    flags = [asyncio.Event() for _ in range(calls)]
    connector = aiohttp.TCPConnector(force_close=True)  # new connections: SO_REUSEPORT spreads them
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as http:

        async def delayed(i: int) -> CallStats:
            await asyncio.sleep(i * ramp_s)
            return await call(http, url, payloads, ended, flags[i])

        running = asyncio.ensure_future(asyncio.gather(*(delayed(i) for i in range(calls))))
        await asyncio.gather(*(f.wait() for f in flags))
        await asyncio.sleep(1.0)  # let the last connections settle
        on_ready(calls)
        await stop()
        ended.set()
        return list(await running)
