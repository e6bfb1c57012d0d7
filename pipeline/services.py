"""What every call's agent shares in one process: the stage backends and the controls.

Built once at start-up (model loading runs off the event loop) and closed at shutdown.
Remote stages come wrapped in their fallback guards (``pipeline.resilience``); local
ones are used as they are.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from parley.config import Settings
from pipeline import resilience
from pipeline.llm import LLM
from pipeline.moderation import Moderator
from pipeline.stt import STT
from pipeline.tts import TTS
from pipeline.usage import Budget

logger = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    stt: STT
    llm: LLM
    tts: TTS
    moderator: Moderator
    budget: Budget

    @classmethod
    async def open(cls, settings: Settings) -> Services:
        loop = asyncio.get_running_loop()
        stages = [await loop.run_in_executor(None, resilience.build_stage, kind, settings)
                  for kind in ("stt", "llm", "tts")]
        return cls(settings, *stages, Moderator.from_settings(settings), Budget.from_settings(settings))

    async def close(self) -> None:
        """Close network clients (remote backends, the budget's Redis); models stay loaded."""
        stages = (self.stt, self.llm, self.tts)
        parts = [getattr(s, "primary", s) for s in stages] + [self.moderator.model, self.budget]
        for part in parts:
            closer: Any = getattr(part, "close", None)
            if closer is not None and asyncio.iscoroutinefunction(closer):
                try:
                    await closer()
                except Exception:
                    logger.warning("closing %s failed", type(part).__name__, exc_info=True)
