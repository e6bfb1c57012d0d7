"""Server-side echo cancellation end to end: the client's microphone hears the agent's own
voice (a simulated loudspeaker: delayed, attenuated, slightly distorted) and the agent must
not interrupt itself — while a real interruption over that echo still works."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

import numpy as np

from media_server.agent_track import AgentTrack
from parley.call.client import CallClient
from pipeline.audio import FRAME_10MS
from tests.test_call import SENTENCE, say_and_wait_reply, voiced_span

ECHO_DELAY_FRAMES = 8  # 80 ms loudspeaker-to-mic path on top of the network round trip
ECHO_GAIN = 0.6


class LoudspeakerMic(AgentTrack):
    """A microphone that also picks up what the client just played (the agent's voice)."""

    def __init__(self, client: CallClient) -> None:
        super().__init__(on_sent=client._on_mic_sent)
        self._client = client
        self._heard = 0  # received 10 ms frames already fed to the echo path
        self._path: collections.deque[np.ndarray] = collections.deque(
            [np.zeros(FRAME_10MS, np.int16)] * ECHO_DELAY_FRAMES
        )

    def _next_pcm(self, t_send: float) -> np.ndarray:
        user = super()._next_pcm(t_send).astype(np.float32)
        received = self._client.received
        while self._heard < len(received):
            self._path.append(received[self._heard].pcm)
            self._heard += 1
        echo = np.concatenate([self._path.popleft() for _ in range(2)]) if len(self._path) >= 2 + ECHO_DELAY_FRAMES \
            else np.zeros(2 * FRAME_10MS, np.int16)
        speaker = 32767 * np.tanh(echo.astype(np.float32) / 32767 * 1.5) / 1.5  # a small loudspeaker
        return np.clip(user + ECHO_GAIN * speaker, -32768, 32767).astype(np.int16)


async def leaky_client(url: str) -> CallClient:
    client = CallClient(url, "echo")
    client.mic = LoudspeakerMic(client)
    await client.connect()
    return client


async def test_own_echo_never_interrupts_but_the_user_still_can(url: str, speech: Callable[..., np.ndarray]) -> None:
    question = speech(SENTENCE)
    client = await leaky_client(url)
    try:
        since = time.monotonic()
        _, t_reply = await say_and_wait_reply(client, question)
        await client.wait_event(lambda e: e["type"] == "tts-end", timeout=30, since=since)
        t_end = time.monotonic()
        await asyncio.sleep(3.0)  # the echo's own tail must not start a new turn either
        kinds = [e["type"] for t, e in client.events if t >= since]
        echoed = client.audio_between(t_reply - 0.05, t_end + 0.3)
        assert "interrupted" not in kinds, "the agent interrupted itself on its own echo"
        assert kinds.count("tts-start") == 1, "the leaked echo was taken for a new user turn"
        # played through without stopping: an agent pausing on its own echo stretches the reply
        assert abs(voiced_span(echoed) - voiced_span(question)) <= 0.1 * voiced_span(question)

        # a real interruption, spoken over the agent's echo, still cuts it off. The user keeps
        # talking as people do when not heard at once: if the echo path has to be learnt
        # again (the mic clock re-anchored under load), no barge-in counts for ~2 s.
        since = time.monotonic()
        await say_and_wait_reply(client, speech(" ".join([SENTENCE] * 3)))
        await asyncio.sleep(1.0)
        client.say(speech("Wait, stop right there please. I have something to say about that, listen."))
        try:
            await client.wait_event(lambda e: e["type"] == "interrupted", timeout=12, since=since)
        except TimeoutError:
            seen = [(round(t - since, 2), e["type"], e.get("state")) for t, e in client.events if t >= since]
            raise AssertionError(f"no barge-in over the echo; events: {seen}") from None
    finally:
        await client.close()
