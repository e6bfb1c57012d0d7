"""The agent's voice as ready-made Opus packets, so aiortc's sender only has to pack them.

Given an ``av.AudioFrame``, aiortc's ``RTCRtpSender`` computes the frame's audio level in
pure Python and encodes it through ``loop.run_in_executor`` — a thread hand-off per 20 ms
frame per call, which the profile of a busy worker showed as its largest cost (FIELD-NOTES,
2026-11-30). Given an ``av.Packet`` it skips both and only packetizes (public behaviour of
``MediaStreamTrack.recv``: "a Frame or a Packet"). So the agent track encodes its own frames:

- while the agent is silent (most of a call) it sends one pre-encoded Opus silence packet
  again and again — no encoding at all;
- while it speaks, each 20 ms mono frame is encoded on the loop (one small C call, cheaper
  than the hop to a thread and back), at a voice bit rate instead of aiortc's 96 kbit/s
  stereo; after speech a few real frames of silence let the decoder fade out before the
  canned packet takes over.

The PCM handed to the echo canceller as its far-end reference is unchanged: it is taken
before encoding, exactly as before.
"""

from __future__ import annotations

import fractions

import av
import numpy as np
from aiortc.mediastreams import MediaStreamTrack
from aiortc.sdp import SessionDescription

from media_server.agent_track import AgentTrack
from pipeline.audio import FRAME_20MS, RATE

TIME_BASE = fractions.Fraction(1, RATE)
BIT_RATE = 32000  # wideband voice; aiortc's own encoder uses 96 kbit/s stereo
FADE_FRAMES = 3  # real-encoded silent frames after speech before the canned silence packet
OPUS_SILENCE = b"\xf8\xff\xfe"  # a 20 ms CELT silence frame, the fallback if the encoder makes none


def negotiated_audio_codec(sdp: str) -> str | None:
    """The codec name (lower case) the first audio section of an answer SDP settled on."""
    for media in SessionDescription.parse(sdp).media:
        if media.kind == "audio" and media.rtp.codecs:
            return str(media.rtp.codecs[0].mimeType.split("/", 1)[1].lower())
    return None


def _encoder() -> av.AudioCodecContext:
    codec = av.CodecContext.create("libopus", "w")
    assert isinstance(codec, av.AudioCodecContext)
    codec.bit_rate = BIT_RATE
    codec.format = "s16"
    codec.layout = "mono"
    codec.sample_rate = RATE
    codec.time_base = TIME_BASE
    codec.options = {"application": "voip"}
    return codec


def _frame(pcm: np.ndarray, pts: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = RATE
    frame.pts = pts
    frame.time_base = TIME_BASE
    return frame


def silence_packet() -> bytes:
    """What libopus makes of steady digital silence (a few bytes), made once per process."""
    codec = _encoder()
    zeros = np.zeros(FRAME_20MS, np.int16)
    for i in range(25):
        for packet in codec.encode(_frame(zeros, i * FRAME_20MS)):
            payload = bytes(packet)
            if len(payload) <= 3:
                return payload
    return OPUS_SILENCE


class OpusPackets:
    """Turns the track's 20 ms mono frames into Opus ``av.Packet``s; silence costs nothing."""

    _silence: bytes | None = None

    def __init__(self) -> None:
        self._codec = _encoder()
        self._since_voice = FADE_FRAMES
        if OpusPackets._silence is None:
            OpusPackets._silence = silence_packet()
        self.encoded = 0  # frames that went through the encoder (the rest were canned silence)

    def packet(self, pcm: np.ndarray, pts: int, silent: bool) -> av.Packet:
        """The packet for the frame ``pcm`` sent at ``pts`` (``silent``: it is known to be zeros)."""
        if silent:
            self._since_voice += 1
        else:
            self._since_voice = 0
        payload = self._silence_payload() if self._since_voice > FADE_FRAMES else self._encode(pcm, pts)
        packet = av.Packet(payload)
        packet.pts = pts
        packet.time_base = TIME_BASE
        return packet

    def _silence_payload(self) -> bytes:
        assert OpusPackets._silence is not None
        return OpusPackets._silence

    def _encode(self, pcm: np.ndarray, pts: int) -> bytes:
        self.encoded += 1
        packets = self._codec.encode(_frame(pcm, pts))
        return bytes(packets[0]) if packets else self._silence_payload()  # libopus: one packet per 20 ms frame


class PacketTrack(MediaStreamTrack):
    """What the peer connection sends for an :class:`AgentTrack`: Opus packets once Opus is agreed.

    Until :meth:`use_opus` (and for any other codec) it passes the agent track's frames on,
    for aiortc to encode as usual.
    """

    kind = "audio"

    def __init__(self, source: AgentTrack) -> None:
        super().__init__()
        self.source = source
        self.packets: OpusPackets | None = None

    def use_opus(self) -> None:
        self.packets = OpusPackets()

    async def recv(self) -> av.AudioFrame | av.Packet:
        pcm = await self.source.next_pcm()
        if self.packets is None:
            return self.source.frame(pcm)
        return self.packets.packet(pcm, self.source.pts, silent=self.source.is_silence(pcm))

    def stop(self) -> None:
        super().stop()
        self.source.stop()
