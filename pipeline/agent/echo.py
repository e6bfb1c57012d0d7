"""The echo persona: the loopback diagnostic agent."""

from __future__ import annotations

import numpy as np

from parley import metrics
from pipeline import events
from pipeline.agent.base import Agent


class EchoAgent(Agent):
    """Loopback diagnostic persona: after each user turn, play back what it heard.

    It exercises the whole media path (capture → server → turn taking → paced playout →
    browser) through the same outbound track and events the AI personas use.
    """

    async def reply_to_audio(self, audio: np.ndarray, t_end: float) -> None:
        metrics.TURNS.labels(self.persona.id).inc()
        self.emit(events.tts_start())
        playout = self.speaker.play(audio)
        self.set_state("speaking")
        if await playout.done:
            self.emit(events.tts_end())
            first = (playout.started_at or t_end) - t_end
            self.emit(events.metrics({"first_frame": round(first * 1000, 1)}))

    async def reply_to_text(self, text: str) -> None:
        """Typed text: confirmed as the user's turn (the page shows ``stt-final`` only), then
        echoed back as the reply's text."""
        self.emit(events.stt_final(text))
        self.emit(events.llm_done(text))
