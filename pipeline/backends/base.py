"""The stage interfaces every backend implements, local or remote — one definition each.

- :class:`STT`: one utterance (48 kHz mono int16) in, text out. ``final=False`` asks for a
  quick interim guess of a still-growing utterance (the agent re-asks every few hundred ms
  while the user talks); ``final=True`` is the end-of-turn transcript. An optional
  :class:`Vocabulary` names words the speaker is likely to say that a recognizer tends to
  mishear (a room's persona name); a backend that can be biased uses it, others ignore it.
- :class:`LLM`: chat messages in, an async stream of text pieces out. Cancellation is the
  barge-in path: the consumer cancels its task or calls ``aclose()`` on the iterator, and
  the backend must stop generating within one token (local) or close the HTTP stream
  (remote) so CPU and quota are not spent on words nobody will hear.
- :class:`TTS`: text in, an async stream of 48 kHz mono int16 chunks out, yielded as soon as
  the backend has them so the agent can start speaking on the first clause; closing the
  iterator (barge-in) must stop synthesis promptly.
- :class:`Embedder`: texts in, one L2-normalised row per text out (a dot product is a cosine).

Everything between the media server and the models is 48 kHz mono int16; backends that
want another rate convert at their own edge. No method may block the event loop: CPU work
goes to the backend's own single-worker executor (``pipeline.backends._local``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(slots=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass(frozen=True, slots=True)
class Vocabulary:
    """Names the speaker is likely to say: a bias for the recognizer, never a constraint.

    Whisper writes an unfamiliar name as familiar words ("Diotima" -> nothing, "Hypatia" ->
    "Hi, patient"), and a room's agent answers only when its name is heard. Keep it short:
    measured with tiny.en, each extra name weakens the bias toward the others.
    """

    names: tuple[str, ...] = ()

    def prompt(self) -> str:
        """The names as a decoder prompt ("Diotima."): what Whisper-style models condition on."""
        return ", ".join(n for n in self.names if n) + "." if any(self.names) else ""


@dataclass(slots=True)
class GenerationParams:
    temperature: float = 0.7
    max_tokens: int = 120
    stop: list[str] = field(default_factory=list)


class STT(ABC):
    """One shared instance per process; safe to call from many calls (calls queue)."""

    name: str = "stt"

    @abstractmethod
    async def transcribe(self, pcm: np.ndarray, *, final: bool = True,
                         vocabulary: Vocabulary | None = None) -> str:
        """Text of ``pcm`` (48 kHz mono int16), stripped; "" for no speech.

        ``vocabulary``: names to favour, where the backend supports a bias (see :class:`Vocabulary`).
        """


class LLM(ABC):
    name: str = "llm"

    @abstractmethod
    def stream(self, messages: list[Message], params: GenerationParams) -> AsyncGenerator[str, None]:
        """Yield text pieces (tokens) as they are generated."""

    def count_tokens(self, text: str) -> int:
        """Token count used by the prompt budget; backends with a tokenizer override this."""
        return max(1, len(text) // 4)


class TTS(ABC):
    name: str = "tts"

    @abstractmethod
    def synthesize(
        self, text: str, *, voice: str | None = None, speed: float = 1.0
    ) -> AsyncGenerator[np.ndarray, None]:
        """Yield 48 kHz mono int16 chunks of ``text`` spoken; ``speed`` > 1 speaks faster."""


class Embedder(ABC):
    """Texts in, one L2-normalised row per text out, so a dot product is a cosine."""

    name: str = "embed"
    dim: int

    @abstractmethod
    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        """A float32 array of shape ``(len(texts), dim)``."""

    @abstractmethod
    async def close(self) -> None:
        """Release the backend's threads or connections."""
