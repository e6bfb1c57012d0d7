"""Language-model stage interface: chat messages in, an async stream of text pieces out.

Cancellation is the barge-in path: the consumer cancels its task or calls ``aclose()`` on
the iterator, and the backend must stop generating within one token (local) or close the
HTTP stream (remote) so the CPU/quota is not spent on words nobody will hear.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field


@dataclass(slots=True)
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass(slots=True)
class GenerationParams:
    temperature: float = 0.7
    max_tokens: int = 120
    stop: list[str] = field(default_factory=list)


class LLM(ABC):
    name: str = "llm"

    @abstractmethod
    def stream(self, messages: list[Message], params: GenerationParams) -> AsyncGenerator[str, None]:
        """Yield text pieces (tokens) as they are generated."""

    def count_tokens(self, text: str) -> int:
        """Token count used by the prompt budget; backends with a tokenizer override this."""
        return max(1, len(text) // 4)
