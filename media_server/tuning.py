"""The one place Parley reaches past aiortc's public API, and why.

Two things about an inbound audio track cannot be set through aiortc's API:

* **Jitter buffer depth.** aiortc gives every inbound audio track a jitter buffer that
  holds 4 packets (≈ 80 ms) before it releases the first frame. For a voice agent that
  delay is paid twice per exchange (user → agent, and in our test clients agent → user)
  and directly lengthens turn latency and barge-in reaction. On loopback and LAN paths 1–2
  packets are enough, so Parley rebuilds that buffer with ``PARLEY_JITTER_PREFETCH``
  packets.
* **Where Opus is decoded.** aiortc starts one decoder thread per received track and hands
  every 20 ms packet to it through a ``queue.Queue``, and every decoded frame back through
  ``asyncio.run_coroutine_threadsafe``: two thread hand-offs (lock, futex wake, self-pipe
  write, a coroutine and a future) per packet to save a ~30 µs decode. Under a worker's
  calls those hand-offs were the largest cost of the media path (FIELD-NOTES: ~40 % of the
  samples in ``threading``/``queue``). :class:`InlineDecoding` stands in for that queue:
  each packet is decoded on the event loop where it arrives and the frame goes straight
  into the track's queue; aiortc's thread still starts but only waits for the stop signal.

Both are applied right after the remote description is set, before any packet arrives,
so nothing buffered is lost. If aiortc renames an attribute, that part degrades to aiortc's
default with a warning instead of failing the call; ``tests/test_tuning.py`` fails then.
"""

from __future__ import annotations

import asyncio
import logging
import queue
from typing import Any

import av
from aiortc import RTCPeerConnection, RTCRtpReceiver
from aiortc.codecs import get_decoder
from aiortc.jitterbuffer import JitterBuffer

from parley import metrics

logger = logging.getLogger(__name__)

_JITTER = "_RTCRtpReceiver__jitter_buffer"
_DECODER_QUEUE = "_RTCRtpReceiver__decoder_queue"


class InlineDecoding:
    """A receiver's decoder queue that decodes on ``put`` (on the event loop, where aiortc
    puts) and queues the frames on the track directly.

    Only the stop signal (``None``) goes to aiortc's own queue, which its decoder thread
    waits on whether it started before or after the swap: the thread then ends the track
    as it always does, after every frame decoded here.
    """

    def __init__(self, original: queue.Queue[Any], frames: asyncio.Queue[Any]) -> None:
        self._control = original
        self._frames = frames
        self._codec_name: str | None = None
        self._decoder: Any = None

    def put(self, task: tuple[Any, Any] | None) -> None:
        if task is None:
            self._control.put(None)
            return
        codec, encoded_frame = task
        if codec.name != self._codec_name:
            self._decoder, self._codec_name = get_decoder(codec), codec.name
        try:
            frames = self._decoder.decode(encoded_frame)
        except (av.FFmpegError, ValueError):  # a corrupt packet: drop it, as a decoder would
            metrics.FRAMES_UNDECODABLE.inc()
            return
        for frame in frames:
            self._frames.put_nowait(frame)

    def get(self) -> tuple[Any, Any] | None:
        """What aiortc's decoder thread waits on: only ever the stop signal."""
        return self._control.get()


def tune_audio_receivers(pc: RTCPeerConnection, jitter_prefetch: int) -> None:
    """Give each audio receiver of ``pc`` a ``jitter_prefetch``-packet jitter buffer (when
    > 0) and inline decoding (see module docstring)."""
    for transceiver in pc.getTransceivers():
        if transceiver.kind != "audio":
            continue
        receiver = transceiver.receiver
        if jitter_prefetch > 0:
            _set_jitter_prefetch(receiver, jitter_prefetch)
        _decode_inline(receiver)


def _set_jitter_prefetch(receiver: RTCRtpReceiver, prefetch: int) -> None:
    old = getattr(receiver, _JITTER, None)
    if not isinstance(old, JitterBuffer):
        logger.warning("aiortc has no %s; keeping its default jitter buffer", _JITTER)
        return
    setattr(receiver, _JITTER, JitterBuffer(capacity=old.capacity, prefetch=prefetch))


def _decode_inline(receiver: RTCRtpReceiver) -> None:
    original = getattr(receiver, _DECODER_QUEUE, None)
    frames = getattr(receiver.track, "_queue", None)
    if isinstance(original, InlineDecoding):
        return
    if not isinstance(original, queue.Queue) or not isinstance(frames, asyncio.Queue):
        logger.warning("aiortc has no %s; keeping its decoder thread", _DECODER_QUEUE)
        return
    setattr(receiver, _DECODER_QUEUE, InlineDecoding(original, frames))
