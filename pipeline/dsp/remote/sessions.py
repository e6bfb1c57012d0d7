"""Per-session DSP state of the audio-processing service, I/O-free and synchronous.

A session is one call's inbound chain (AEC state, noise floor, AGC gain...), so chunks of
one session must be processed in order and never two at once; the gRPC layer guarantees
that with a lock per session and runs :meth:`DspSession.process` on a worker thread.
Audio at another rate than 48 kHz is converted on the way in and back (libswresample,
one resampler per direction so its filter state spans chunks).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from parley.config import Settings
from pipeline.audio import FRAME_10MS, RATE
from pipeline.dsp.base import FrameMeta
from pipeline.dsp.chain import DspChain
from pipeline.dsp.remote import dsp_pb2 as pb
from pipeline.dsp.resample import FrameResampler

RATES = (8000, 16000, 24000, 32000, 48000)


class BadChunk(ValueError):
    """A chunk the service cannot process (rate, sample format); INVALID_ARGUMENT."""


def frame_info(meta: FrameMeta) -> pb.FrameInfo:
    return pb.FrameInfo(
        t=meta.t, speech_probability=meta.speech_probability, vad=meta.is_speech,
        maybe_speech=meta.maybe_speech, noise_level_db=meta.noise_level_db, level_db=meta.level_db,
        echo_active=meta.echo_active, echo_uncertain=meta.echo_uncertain,
        has_echo_delay=meta.echo_delay_ms is not None, echo_delay_ms=meta.echo_delay_ms or 0.0,
        gain_db=meta.gain_db,
    )


def frame_meta(info: pb.FrameInfo) -> FrameMeta:
    return FrameMeta(
        t=info.t, speech_probability=info.speech_probability, is_speech=info.vad,
        maybe_speech=info.maybe_speech, noise_level_db=info.noise_level_db, level_db=info.level_db,
        echo_active=info.echo_active, echo_uncertain=info.echo_uncertain,
        echo_delay_ms=info.echo_delay_ms if info.has_echo_delay else None, gain_db=info.gain_db,
    )


def pcm_of(data: bytes) -> np.ndarray:
    if len(data) % 2:
        raise BadChunk("pcm must be 16-bit samples (an even number of bytes)")
    return np.frombuffer(data, dtype="<i2").astype(np.int16, copy=False)


@dataclass
class DspSession:
    """One session's chain plus the rate conversion and sample remainder around it."""

    session_id: str
    chain: DspChain
    rate: int = RATE
    last_used: float = field(default_factory=time.monotonic)
    frames: int = 0
    _pending: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))
    _to_chain: FrameResampler | None = None
    _from_chain: FrameResampler | None = None
    _next_t: float | None = None

    @classmethod
    def open(cls, session_id: str, settings: Settings, rate: int) -> DspSession:
        rate = rate or RATE
        if rate not in RATES:
            raise BadChunk(f"rate must be one of {RATES}, got {rate}")
        session = cls(session_id, DspChain(settings), rate)
        if rate != RATE:
            session._to_chain = FrameResampler(rate=RATE)
            session._from_chain = FrameResampler(rate=rate, frame_samples=rate // 100)
        return session

    def process(self, chunk: pb.Chunk) -> pb.ProcessedChunk:
        """Process the whole 10 ms frames the chunk completes; the rest waits for the next."""
        if (chunk.rate or RATE) != self.rate:
            raise BadChunk(f"session {self.session_id} runs at {self.rate} Hz, chunk says {chunk.rate}")
        start = time.perf_counter()
        self.last_used = time.monotonic()
        for far in chunk.far_end:
            self.chain.far_end(pcm_of(far.pcm), far.t)
        frames = self._frames_of(pcm_of(chunk.pcm), chunk.t)
        out, infos = self._run(frames)
        return self._result(chunk.seq, out, infos, start)

    def flush(self) -> pb.ProcessedChunk:
        """Push silence through the chain's delay so the last real audio comes out."""
        start = time.perf_counter()
        tail = int(round(self.chain.latency_ms / 10)) + 1
        t = self._next_t or 0.0
        frames = [(np.zeros(FRAME_10MS, np.int16), t + i * 0.01) for i in range(tail)]
        out, infos = self._run(frames)
        return self._result(0, out, infos, start)

    def _frames_of(self, pcm: np.ndarray, t: float) -> list[tuple[np.ndarray, float]]:
        if self._to_chain is not None:
            pieces = self._to_chain.push_pcm(pcm, self.rate)
        else:
            pcm = np.concatenate([self._pending, pcm]) if self._pending.size else pcm
            whole = len(pcm) // FRAME_10MS * FRAME_10MS
            self._pending = pcm[whole:].copy()
            pieces = [pcm[i:i + FRAME_10MS] for i in range(0, whole, FRAME_10MS)]
        # t stamps the chunk's first sample; a client that sends none gets a running clock
        t0 = t if t else (self._next_t or 0.0)
        frames = [(p, t0 + i * 0.01) for i, p in enumerate(pieces)]
        if frames:
            self._next_t = frames[-1][1] + 0.01
        return frames

    def _run(self, frames: list[tuple[np.ndarray, float]]) -> tuple[np.ndarray, list[FrameMeta]]:
        outs, metas = [], []
        for pcm, t in frames:
            clean, meta = self.chain.process(pcm, t)
            outs.append(clean)
            metas.append(meta)
        self.frames += len(frames)
        audio = np.concatenate(outs) if outs else np.zeros(0, np.int16)
        if self._from_chain is not None and audio.size:
            audio = np.concatenate(self._from_chain.push_pcm(audio, RATE) or [np.zeros(0, np.int16)])
        return audio, metas

    def _result(self, seq: int, audio: np.ndarray, metas: list[FrameMeta], start: float) -> pb.ProcessedChunk:
        return pb.ProcessedChunk(
            session_id=self.session_id, seq=seq, pcm=audio.astype("<i2").tobytes(), rate=self.rate,
            speech_probability=max((m.speech_probability for m in metas), default=0.0),
            noise_level=metas[-1].noise_level_db if metas else -120.0,
            vad=any(m.is_speech for m in metas), frames=[frame_info(m) for m in metas],
            latency_ms=self.chain.latency_ms, process_ms=(time.perf_counter() - start) * 1000.0,
        )

