"""A headless WebRTC caller (aiortc), used by ``parley call``, the tests and the benchmarks.

It behaves like a browser: creates the ``events`` DataChannel before its offer, sends its
microphone on a paced track (the same :class:`AgentTrack` the server speaks with, so the
WAV goes out in real time followed by silence), always reads the agent's audio, and keeps
every received frame with its arrival time so latency and barge-in can be measured at the
client, where a user would perceive them.

With ``echo_db`` set, the client is a laptop without echo cancellation: what it receives
comes back into its microphone through a small room (:mod:`parley.call.echo`), mixed with
whatever it is saying.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from media_server.agent_track import AgentTrack, Playback
from media_server.tuning import tune_audio_receivers
from parley.call.echo import EchoPath, LeakyMic
from pipeline.audio import FRAME_10MS, RATE, rms_dbfs
from pipeline.dsp.resample import FrameResampler
from pipeline.tasks import TaskRegistry

VOICE_DBFS = -45.0  # a received 10 ms frame louder than this carries the agent's voice
LATE_S = 0.04  # a frame arriving this much behind its media-time schedule counts as late


@dataclass(slots=True)
class Received:
    t: float  # monotonic arrival time
    pcm: np.ndarray  # 10 ms, 48 kHz mono int16

    @property
    def voiced(self) -> bool:
        return rms_dbfs(self.pcm) > VOICE_DBFS


@dataclass
class CallClient:
    """One client call; use ``async with CallClient(url, persona) as c``."""

    url: str
    persona: str | None = None
    token: str | None = None  # a previous session's token: the new session keeps that user
    resume: str | None = None  # that session's id: resume it (same conversation window)
    jitter_prefetch: int = 2
    record: bool = False  # consent to the server recording the call (both directions)
    echo_db: float | None = None  # the agent's voice back in the mic at this level (None: no echo)
    echo_delay_ms: float = 120.0  # ... this long after it was received
    received: list[Received] = field(default_factory=list)
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.echo = EchoPath(self.echo_db, self.echo_delay_ms) if self.echo_db is not None else None
        self.mic = AgentTrack(on_sent=self._on_mic_sent) if self.echo is None \
            else LeakyMic(self.echo, on_sent=self._on_mic_sent)
        self.mic_sent: list[tuple[float, int]] = []  # (send time, samples of voice in frame)
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.channel = self.pc.createDataChannel("events")
        self.channel.on("message", self._on_message)
        self._waiters: list[tuple[Any, float, asyncio.Future[dict[str, Any]]]] = []
        self._tasks = TaskRegistry("client")
        self.session: dict[str, Any] = {}
        self.recording = False  # the server said it records this call
        self.frames_received = 0
        self.frames_late = 0

    async def __aenter__(self) -> CallClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self, timeout: float = 15.0) -> None:
        self.pc.addTrack(self.mic)
        self.pc.on("track", self._on_track)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:
            previous = {"Authorization": f"Bearer {self.token}"} if self.token else None
            request = {"persona": self.persona} | ({"session_id": self.resume} if self.resume else {})
            async with http.post(f"{self.url}/api/sessions", json=request, headers=previous) as r:
                self.session = await _json_or_raise(r)
            headers = {"Authorization": f"Bearer {self.session['token']}"}
            body = {"sdp": self.pc.localDescription.sdp, "type": "offer", "persona": self.persona,
                    "session_id": self.session["session_id"], "record": self.record}
            async with http.post(f"{self.url}/api/offer", json=body, headers=headers) as r:
                answer = await _json_or_raise(r)
        await self.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        tune_audio_receivers(self.pc, self.jitter_prefetch)
        self.call_id = answer.get("call_id")
        self.recording = bool(answer.get("recording"))
        await self.wait_event(lambda e: e["type"] == "turn", timeout=timeout)

    def _on_mic_sent(self, pcm: np.ndarray, t: float) -> None:
        self.mic_sent.append((t, int(np.count_nonzero(pcm))))

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._tasks.spawn(self._record(track), "recorder")

    async def _record(self, track: MediaStreamTrack) -> None:
        converter = FrameResampler()
        base: float | None = None  # earliest (arrival - media time) seen: the on-time schedule
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                assert isinstance(frame, av.AudioFrame)  # an audio track yields audio frames
                t = time.monotonic()
                self.frames_received += 1
                offset = t - (frame.pts or 0) / frame.sample_rate
                base = offset if base is None else min(base, offset)
                if offset - base > LATE_S:
                    self.frames_late += 1
                for i, pcm in enumerate(converter.push(frame)):
                    self.received.append(Received(t + i * 0.01, pcm))
                    if self.echo is not None:  # played now: its echo reaches the mic later
                        self.echo.hear(pcm, t + i * 0.01)

    def _on_message(self, raw: str) -> None:
        t, message = time.monotonic(), json.loads(raw)
        self.events.append((t, message))
        for waiter in list(self._waiters):
            predicate, since, future = waiter
            if t >= since and not future.done() and predicate(message):
                future.set_result(message)

    def send(self, message: dict[str, Any]) -> None:
        self.channel.send(json.dumps(message))

    def say(self, pcm: np.ndarray) -> Playback:
        """Queue speech into the microphone (sent in real time)."""
        return self.mic.play(pcm)

    async def wait_event(self, predicate: Any, timeout: float, since: float = 0.0) -> dict[str, Any]:
        """First event after ``since`` (monotonic) matching ``predicate``; TimeoutError otherwise."""

        found = next((e for t, e in self.events if t >= since and predicate(e)), None)
        if found is not None:
            return found
        waiter = (predicate, since, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            return await asyncio.wait_for(waiter[2], timeout)
        finally:
            self._waiters.remove(waiter)

    def voiced_between(self, start: float, end: float = float("inf")) -> list[Received]:
        return [r for r in self.received if start <= r.t < end and r.voiced]

    def audio_between(self, start: float, end: float) -> np.ndarray:
        chunks = [r.pcm for r in self.received if start <= r.t < end]
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)

    async def close(self) -> None:
        await self._tasks.cancel_all(timeout=5.0)
        self.mic.stop()
        await self.pc.close()


async def _json_or_raise(response: aiohttp.ClientResponse) -> dict[str, Any]:
    body = await response.json(content_type=None)
    if response.status >= 400:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        raise RuntimeError(f"{response.url.path}: {response.status} {error.get('code')}: {error.get('message')}")
    return body


def speech_end_offset(pcm: np.ndarray, threshold_dbfs: float = -40.0) -> float:
    """Seconds from the start of ``pcm`` to the end of its last 10 ms frame above the threshold."""
    frames = pcm[: pcm.size - pcm.size % FRAME_10MS].reshape(-1, FRAME_10MS)
    loud = [i for i, f in enumerate(frames) if rms_dbfs(f) > threshold_dbfs]
    return (loud[-1] + 1) * FRAME_10MS / RATE if loud else 0.0
