"""The end-of-turn model in the loop: one speaker's pauses judged, the verdict fed back.

A :class:`pipeline.dsp.turn.TurnDetector` emits PAUSE with the utterance so far when a
speaker goes quiet mid-turn; the audio model (Smart Turn, :mod:`pipeline.dsp.smart_turn`)
says how likely the turn is complete, off the event loop, and the verdict goes back to the
detector (:meth:`TurnDetector.hint_probability`), which then picks how much more silence ends
the turn (:mod:`pipeline.dsp.endpoint`). A verdict only counts for the pause it judged: one
that lands after the speaker resumed (or after a later pause) is dropped.

Every listener that takes turns uses this one piece: a 1:1 call's agent
(:class:`pipeline.agent.base.Agent`) and each room participant's
:class:`pipeline.agent.room.SpeakerPipeline`, so a room ends turns exactly as a call does.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import numpy as np

from parley.config import Settings
from pipeline.dsp import endpoint
from pipeline.dsp.turn import TurnDetector, TurnEvent, TurnEventKind
from pipeline.tasks import TaskRegistry

logger = logging.getLogger(__name__)


class TurnModel(Protocol):
    """An audio end-of-turn model (``pipeline.dsp.smart_turn.SmartTurn``)."""

    async def judge(self, pcm: np.ndarray) -> float: ...


def turn_detector(settings: Settings) -> TurnDetector:
    """A speaker's turn detector, with the ``PARLEY_TURN_*`` waits and barge-in confirmation."""
    return TurnDetector(endpoint=endpoint.from_settings(settings), confirm_ms=settings.barge_in_min_ms)


def turn_model_for(settings: Settings, services: Any) -> TurnModel | None:
    """The process's end-of-turn model when ``PARLEY_TURN_MODEL=smart-turn`` and it loaded."""
    if settings.turn_model != "smart-turn":
        return None
    model: TurnModel | None = getattr(services, "turn_model", None)
    return model


class PauseJudge:
    """Asks ``model`` about each PAUSE of one speaker and hints that speaker's detector."""

    def __init__(self, model: TurnModel | None, turns: TurnDetector, tasks: TaskRegistry,
                 log_prefix: str) -> None:
        self.model = model
        self.turns = turns
        self._tasks = tasks
        self._log_prefix = log_prefix
        self.pauses = 0  # PAUSE events so far: a verdict only counts for the pause it judged
        self.verdicts = 0  # verdicts that reached the detector (tests, logs)

    def on_event(self, event: TurnEvent) -> None:
        """Feed every turn event; a PAUSE with audio is judged (when there is a model)."""
        if event.kind is not TurnEventKind.PAUSE or event.audio is None:
            return
        self.pauses += 1
        if self.model is not None:
            self._tasks.spawn(self._judge(self.model, event.audio, self.pauses), "end-of-turn model")

    async def _judge(self, model: TurnModel, audio: np.ndarray, pause: int) -> None:
        try:
            probability = await model.judge(audio)
        except Exception:
            logger.warning("%s: end-of-turn model failed", self._log_prefix, exc_info=True)
            return
        if pause == self.pauses and self.turns.in_speech:
            self.turns.hint_probability(probability)
            self.verdicts += 1
