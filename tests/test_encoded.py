"""Pre-encoded Opus for the agent's voice: what is heard, what the echo canceller is told, and
that aiortc's sender really sends ``av.Packet``s (a real peer pair) — fails if aiortc stops."""

from __future__ import annotations

import asyncio
import contextlib
import itertools

import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from media_server.agent_track import AgentTrack
from media_server.encoded import OpusPackets, PacketTrack, negotiated_audio_codec, silence_packet
from pipeline.audio import FRAME_20MS, RATE


def _tone(seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (np.sin(2 * np.pi * hz * t) * 8000).astype(np.int16)


def _decode(packets: list[av.Packet]) -> np.ndarray:
    decoder = av.CodecContext.create("opus", "r")
    assert isinstance(decoder, av.AudioCodecContext)
    decoder.sample_rate = RATE
    decoder.layout = "mono"
    out = []
    for p in packets:
        for frame in decoder.decode(av.Packet(bytes(p))):
            assert frame.format.name == "fltp"  # libavcodec's opus decoder: planar float in [-1, 1]
            out.append(frame.to_ndarray()[0] * 32768.0)
    return np.concatenate(out).astype(np.float64)


def _stepping_clock() -> itertools.count[float]:
    return itertools.count(1000.0, FRAME_20MS / RATE)


async def test_silence_is_canned_speech_is_encoded_and_the_reference_is_exact() -> None:
    assert len(silence_packet()) <= 3
    sent: list[np.ndarray] = []
    clock = _stepping_clock()
    track = AgentTrack(on_sent=lambda pcm, t: sent.append(pcm.copy()), clock=lambda: next(clock))
    sending = PacketTrack(track)
    sending.use_opus()
    tone = _tone(1.0)
    packets = [await sending.recv() for _ in range(25)]  # 0.5 s of idle
    track.play(tone)
    packets += [await sending.recv() for _ in range(75)]  # 1 s of tone, then 0.5 s idle again
    assert all(isinstance(p, av.Packet) for p in packets)
    assert [p.pts for p in packets] == [i * FRAME_20MS for i in range(100)]
    assert isinstance(sending.packets, OpusPackets)
    assert sending.packets.encoded <= 50 + 3 + 1  # the tone (+ fade-out); idle frames cost no encoding
    # the echo canceller's far-end reference is exactly what was played, silence included
    reference = np.concatenate(sent)
    assert np.array_equal(reference[25 * FRAME_20MS : 75 * FRAME_20MS], tone)
    assert not reference[: 25 * FRAME_20MS].any() and not reference[75 * FRAME_20MS :].any()
    heard = _decode([p for p in packets if isinstance(p, av.Packet)])
    voiced, idle = heard[30 * FRAME_20MS : 70 * FRAME_20MS], heard[85 * FRAME_20MS :]
    assert np.sqrt(np.mean(voiced**2)) > 3000  # the tone (rms 5657) comes through
    assert np.sqrt(np.mean(idle**2)) < 50


async def test_aiortc_sends_the_packets_between_real_peers() -> None:
    """Two peers over loopback: the receiver hears the tone the PacketTrack sent as Opus packets."""
    sender = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    receiver = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    track = AgentTrack()
    sending = PacketTrack(track)
    sender.addTrack(sending)
    received: list[np.ndarray] = []
    tasks: list[asyncio.Task[None]] = []

    async def record(remote: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await remote.recv()
                assert isinstance(frame, av.AudioFrame)
                received.append(frame.to_ndarray().reshape(-1)[::2].copy())  # stereo s16 packed: left

    receiver.on("track", lambda remote: tasks.append(asyncio.ensure_future(record(remote))))
    try:
        await sender.setLocalDescription(await sender.createOffer())
        await receiver.setRemoteDescription(sender.localDescription)
        await receiver.setLocalDescription(await receiver.createAnswer())
        assert negotiated_audio_codec(receiver.localDescription.sdp) == "opus"
        sending.use_opus()
        await sender.setRemoteDescription(receiver.localDescription)
        playback = track.play(_tone(1.0))
        await asyncio.wait_for(playback.done, 10)
        await asyncio.sleep(0.5)
        assert sending.packets is not None and 0 < sending.packets.encoded < track.frames_sent
        heard = np.concatenate(received).astype(np.float64)
        loud = [np.sqrt(np.mean(c**2)) for c in np.array_split(heard, max(1, heard.size // FRAME_20MS))]
        assert sum(level > 3000 for level in loud) >= 35  # ~1 s of tone arrived (50 frames sent)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await sender.close()
        await receiver.close()
