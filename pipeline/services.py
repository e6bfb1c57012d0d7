"""What every call's agent shares in one process: the stage backends and the controls.

Built once at start-up (model loading runs off the event loop) and closed at shutdown.
Remote stages come wrapped in their fallback guards (``pipeline.backends.resilience``); local
ones are used as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from parley.config import Settings
from pipeline.backends import registry, resilience
from pipeline.backends.base import LLM, STT, TTS
from pipeline.memory import MemoryService
from pipeline.moderation import Moderator
from pipeline.usage import Budget
from pipeline.window import ConversationWindow

logger = logging.getLogger(__name__)


FILLER_TEXT = "Hmm, one moment."
#: said when a turn cannot be answered (pipeline.agent.fallback)
APOLOGY_TEXT = "Sorry, I lost my train of thought. Could you say that again?"


@dataclass
class Services:
    settings: Settings
    stt: STT
    llm: LLM
    tts: TTS
    moderator: Moderator
    budget: Budget
    filler: np.ndarray | None = None  # pre-synthesized "one moment" (48 kHz), played on dead air
    apology: np.ndarray | None = None  # pre-synthesized APOLOGY_TEXT, for turns nothing can answer
    turn_model: Any = None  # pipeline.dsp.smart_turn.SmartTurn when PARLEY_TURN_MODEL=smart-turn
    # durable state, set by the signaling layer that opened it (None in bare pipelines)
    memory: MemoryService | None = None
    window: ConversationWindow | None = None
    store: Any = None  # storage.Store: users, sessions, turn log

    @classmethod
    async def open(cls, settings: Settings) -> Services:
        loop = asyncio.get_running_loop()
        stt, llm, tts = [await loop.run_in_executor(None, resilience.build_stage, kind, settings)
                         for kind in ("stt", "llm", "tts")]
        services = cls(settings, stt, llm, tts, Moderator.from_settings(settings), Budget.from_settings(settings))
        if settings.filler_after_s > 0:
            services.filler = await _synthesize_line(settings, FILLER_TEXT)
        services.apology = await _synthesize_line(settings, APOLOGY_TEXT)
        if settings.turn_model == "smart-turn":
            services.turn_model = await loop.run_in_executor(None, _load_turn_model)
        return services

    async def close(self) -> None:
        """Close network clients (remote backends, the budget's Redis); local models stay
        loaded and shared. A closed client is evicted from the process-wide caches, so a
        later ``open`` in the same process (tests, a restarted app) builds a fresh one."""
        remote = []
        for stage in (self.stt, self.llm, self.tts):
            primary = getattr(stage, "primary", None)
            if primary is not None:
                resilience.forget_stage(stage)
                remote.append(primary)
        if self.moderator.model is not None:
            remote.append(self.moderator.model)
        for part in remote:
            registry.evict(part)
        for part in [*remote, self.budget]:
            closer: Any = getattr(part, "close", None)
            if closer is not None and asyncio.iscoroutinefunction(closer):
                try:
                    await closer()
                except Exception:
                    logger.warning("closing %s failed", type(part).__name__, exc_info=True)


def _load_turn_model() -> Any:
    """Smart Turn, shared by every call of the process; None (silence + transcript cues
    only) if its package is missing, so a node without it still takes turns."""
    from pipeline.dsp.smart_turn import shared_model

    try:
        return shared_model()
    except Exception:
        logger.warning("no end-of-turn model (pip install --no-deps pipecat-ai); "
                       "turns end on silence and the transcript", exc_info=True)
        return None


async def _synthesize_line(settings: Settings, text: str) -> np.ndarray | None:
    """A fixed line (the filler, the apology), spoken once at start-up by the *local* TTS:
    it must play even when the configured (remote) TTS is what is failing."""
    try:
        tts: TTS = registry.get("tts", "local", settings)
        async with contextlib.aclosing(tts.synthesize(text)) as chunks:
            pcm = [chunk async for chunk in chunks]
    except Exception:
        logger.warning("no local TTS to pre-synthesize %r; it will not be played", text, exc_info=True)
        return None
    return np.concatenate(pcm) if pcm else None
