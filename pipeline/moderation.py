"""Moderation of what the user says and of what the agent is about to say.

Two layers: a regex blocklist from ``PARLEY_BLOCKLIST`` (a file path, or a comma list)
that costs nothing and always runs, and — when the OpenAI backend is in use — the
moderation model. Replies are checked sentence by sentence, *before* each sentence goes
to TTS, because a spoken word cannot be taken back: the voice agent swaps the first
flagged sentence for the persona's :func:`safe_reply` and stops the reply there.

A failing or slow moderation model does not block the conversation: the blocklist has
already run, the model error is counted (``parley_backend_errors_total{stage="moderation"}``)
and the text passes. A server without a moderation endpoint (vLLM, Ollama: HTTP 404)
switches the model off for the process instead of failing every turn.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from prometheus_client import Counter

from parley.config import Settings
from pipeline.backends import registry
from pipeline.backends.resilience import BackendError, CircuitBreaker, Guard, Policy

logger = logging.getLogger(__name__)

MODERATION_FLAGS = Counter(
    "parley_moderation_flags_total", "Texts flagged by moderation", ["stage", "source"]
)

_SAFE_REPLIES = {
    "socrates": "Let us set that question aside, my friend, and examine one more worthy of us.",
    "holmes": "That is a line of inquiry I shall not pursue. Let us return to the case at hand.",
    "storyteller": "That part of the tale is best left untold. Shall we follow another path?",
    "echo": "I will not repeat that.",
}
_DEFAULT_SAFE_REPLY = "I'd rather not talk about that. Let's talk about something else."


def safe_reply(persona_name: str) -> str:
    """What the persona says instead of a flagged sentence (matched by id or display name)."""
    name = persona_name.lower()
    for persona, line in _SAFE_REPLIES.items():
        if persona in name:
            return line
    return _DEFAULT_SAFE_REPLY


@dataclass(frozen=True, slots=True)
class Verdict:
    """Outcome of one check. ``source`` says which layer flagged it; never holds the text."""

    allowed: bool = True
    source: str = ""
    categories: tuple[str, ...] = ()


ALLOWED = Verdict()


class ModerationModel(Protocol):
    """A classifier service (``@register("moderation", name)``)."""

    async def classify(self, text: str) -> list[str]:
        """Names of the categories ``text`` is flagged for; [] when it is fine."""


class Blocklist:
    """Case-insensitive regexes, each matched as a whole word or phrase."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = [p for p in (p.strip() for p in patterns) if p and not p.startswith("#")]
        joined = "|".join(f"(?:{p})" for p in self.patterns)
        self._regex = re.compile(rf"(?<!\w)(?:{joined})(?!\w)", re.IGNORECASE) if joined else None

    @classmethod
    def from_setting(cls, value: str) -> Blocklist:
        """``value`` is a file (one regex a line, ``#`` comments) or a comma-separated list."""
        if not value.strip():
            return cls([])
        path = Path(value).expanduser()
        if path.is_file():
            return cls(path.read_text(encoding="utf-8").splitlines())
        return cls(value.split(","))

    def matches(self, text: str) -> bool:
        return self._regex is not None and self._regex.search(text) is not None


class Moderator:
    """Checks user turns and reply sentences; one instance per process."""

    def __init__(
        self, blocklist: Blocklist, model: ModerationModel | None = None, *, timeout_s: float = 1.0
    ) -> None:
        self.blocklist = blocklist
        self.model = model
        policy = Policy(first_chunk_timeout_s=timeout_s, retries=1)
        self._guard = Guard("moderation", policy, CircuitBreaker("moderation"))

    @classmethod
    def from_settings(cls, settings: Settings) -> Moderator:
        """Blocklist always; the model per ``PARLEY_MODERATION``: auto (= with the openai LLM),
        openai, or off."""
        blocklist = Blocklist.from_setting(str(getattr(settings, "blocklist", "")))
        mode = getattr(settings, "moderation", "auto") or "auto"
        if mode == "auto":
            mode = "openai" if settings.llm == "openai" else "off"
        model = registry.get("moderation", mode, settings) if mode != "off" else None
        timeout_s = float(getattr(settings, "moderation_timeout_s", 1.0))
        return cls(blocklist, model, timeout_s=timeout_s)

    async def check_user(self, text: str) -> Verdict:
        """Check a user's final transcript before it reaches the LLM."""
        return await self._check("user", text)

    async def check_reply(self, sentence: str) -> Verdict:
        """Check one LLM sentence before it is spoken."""
        return await self._check("reply", sentence)

    async def _check(self, stage: str, text: str) -> Verdict:
        verdict = ALLOWED
        if self.blocklist.matches(text):
            verdict = Verdict(False, "blocklist")
        elif self.model is not None and text.strip():
            categories = await self._classify(self.model, text)
            if categories:
                verdict = Verdict(False, "model", tuple(categories))
        if not verdict.allowed:
            MODERATION_FLAGS.labels(stage, verdict.source).inc()
            logger.info(
                "moderation flagged a %s text (%s %s)", stage, verdict.source, verdict.categories
            )
        return verdict

    async def _classify(self, model: ModerationModel, text: str) -> list[str]:
        """The model's categories; [] if the model fails (fail open, counted, logged)."""
        try:
            return await self._guard.call(lambda: model.classify(text))
        except BackendError as exc:
            if exc.status == 404:
                logger.warning("moderation endpoint not found; model moderation switched off")
                self.model = None
            else:
                logger.warning("moderation model unavailable, text passed: %s", exc)
            return []
