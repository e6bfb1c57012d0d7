"""Audio over the WebSocket fallback, the same for a call and a room participant.

Inbound, ``audio-chunk {seq, data, rate}`` carries base64 little-endian int16 mono at one
of ``ALLOWED_RATES``; :meth:`WsAudio.frames` checks it (``bad_audio`` to the client when it
is not) and lifts it to the pipeline's 48 kHz 10 ms frames, one resampler per rate so a
client that switches rates keeps clean state. Outbound, :meth:`WsAudio.pump` pulls a paced
20 ms track as an RTP sender would and sends each frame that carries voice as ``tts-chunk``.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import av
import numpy as np
from aiortc.mediastreams import MediaStreamTrack

from media_server.events import EventSink
from pipeline import events
from pipeline.audio import RATE
from pipeline.dsp.resample import FrameResampler

ALLOWED_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)


class WsAudio:
    """One WebSocket leg's audio edge (see module docstring)."""

    def __init__(self, sink: EventSink) -> None:
        self._sink = sink
        self._converters: dict[int, FrameResampler] = {}

    def frames(self, message: dict[str, Any]) -> list[np.ndarray]:
        """The chunk as 48 kHz 10 ms frames; [] (and ``bad_audio`` sent) when it is malformed."""
        rate = message.get("rate", RATE)
        try:
            if rate not in ALLOWED_RATES:
                raise ValueError(f"rate must be one of {ALLOWED_RATES}")
            raw = base64.b64decode(message.get("data", ""), validate=True)
            if not raw or len(raw) % 2 or len(raw) > rate:  # 1 sample to 0.5 s per chunk (PyAV: ENOMEM on 0)
                raise ValueError("data must be int16 PCM of at most 0.5 s")
        except (ValueError, binascii.Error, TypeError) as exc:
            self._sink.send(events.error("bad_audio", str(exc)))
            return []
        converter = self._converters.setdefault(rate, FrameResampler())
        return converter.push_pcm(np.frombuffer(raw, dtype="<i2"), rate)

    async def pump(self, track: MediaStreamTrack) -> None:
        """Pull ``track`` like an RTP sender would; forward frames that carry voice."""
        while True:
            frame = await track.recv()
            assert isinstance(frame, av.AudioFrame)  # an audio track yields audio frames
            pcm = frame.to_ndarray()
            if pcm.any():
                data = base64.b64encode(pcm.astype("<i2").tobytes()).decode()
                self._sink.send(events.tts_chunk(data, RATE))
