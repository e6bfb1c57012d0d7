"""``media_server.tuning`` between two real aiortc peers: each inbound audio packet is decoded
on the event loop (no decoder-thread hand-off), the tone arrives intact, and closing the peer
still ends the track and stops aiortc's thread. Fails when aiortc renames what it patches."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from media_server.agent_track import AgentTrack
from media_server.tuning import _DECODER_QUEUE, _JITTER, InlineDecoding, tune_audio_receivers
from pipeline.audio import FRAME_20MS, RATE


def _decoder_threads() -> int:
    return sum(t.name == "audio-decoder" and t.is_alive() for t in threading.enumerate())


async def test_inbound_audio_is_decoded_on_the_loop_and_the_track_still_ends() -> None:
    sender = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    receiver = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    outbound = AgentTrack()
    sender.addTrack(outbound)
    heard: list[np.ndarray] = []
    decoded_on: set[int] = set()
    ended = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    threads_before = _decoder_threads()

    async def record(remote: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await remote.recv()
                assert isinstance(frame, av.AudioFrame)
                heard.append(frame.to_ndarray().reshape(-1)[::2].copy())
        ended.set()

    receiver.on("track", lambda remote: tasks.append(asyncio.ensure_future(record(remote))))
    try:
        await sender.setLocalDescription(await sender.createOffer())
        await receiver.setRemoteDescription(sender.localDescription)
        tune_audio_receivers(receiver, jitter_prefetch=2)
        (transceiver,) = receiver.getTransceivers()
        inline = getattr(transceiver.receiver, _DECODER_QUEUE)
        assert isinstance(inline, InlineDecoding)
        assert getattr(transceiver.receiver, _JITTER)._prefetch == 2
        original_put = inline.put

        def put(task: object) -> None:  # record which thread decodes
            decoded_on.add(threading.get_ident())
            original_put(task)  # type: ignore[arg-type]

        inline.put = put  # type: ignore[method-assign]
        await receiver.setLocalDescription(await receiver.createAnswer())
        await sender.setRemoteDescription(receiver.localDescription)
        tone = (np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE) * 8000).astype(np.int16)
        await asyncio.wait_for(outbound.play(tone).done, 10)
        await asyncio.sleep(0.5)
        assert decoded_on == {threading.get_ident()}  # every packet decoded on the loop's thread
        levels = [np.sqrt(np.mean(np.square(c, dtype=np.float64)))
                  for c in np.array_split(np.concatenate(heard), len(heard) or 1)]
        assert sum(level > 3000 for level in levels) >= 35  # ~1 s of tone arrived (50 frames sent)
        assert len(heard) * FRAME_20MS >= RATE  # tone and the silence around it, no gap
    finally:
        await sender.close()
        await receiver.close()
    await asyncio.wait_for(ended.wait(), 5)  # aiortc's thread still ends the track
    for task in tasks:
        await task
    assert _decoder_threads() == threads_before
