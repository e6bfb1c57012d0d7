"""Speech-to-text stage interface.

A backend turns one utterance (48 kHz mono int16) into text. ``final=False`` asks for a
quick interim guess of a still-growing utterance (the agent re-asks every few hundred ms
while the user talks); ``final=True`` is the end-of-turn transcript. Backends convert to
their own rate at their edge. ``transcribe`` must not block the event loop: CPU work goes
to the backend's own single-worker executor.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class STT(ABC):
    """One shared instance per process; safe to call from many calls (calls queue)."""

    name: str = "stt"

    @abstractmethod
    async def transcribe(self, pcm: np.ndarray, *, final: bool = True) -> str:
        """Text of ``pcm`` (48 kHz mono int16), stripped; "" for no speech."""
