"""Text-to-speech stage interface: text in, an async stream of 48 kHz mono int16 chunks out.

Chunks are yielded as soon as the backend has them so the agent can start speaking on the
first clause; closing the iterator (barge-in) must stop synthesis promptly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator

import numpy as np


class TTS(ABC):
    name: str = "tts"

    @abstractmethod
    def synthesize(
        self, text: str, *, voice: str | None = None, speed: float = 1.0
    ) -> AsyncGenerator[np.ndarray, None]:
        """Yield 48 kHz mono int16 chunks of ``text`` spoken; ``speed`` > 1 speaks faster."""
