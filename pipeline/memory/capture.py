"""Which user statements are worth remembering, and how to log user text safely.

Pure functions, no I/O: the rules run on every final transcript, so they must be cheap and
testable without a model. They favour precision over recall — a missed fact can be said
again or saved explicitly, while a stored false positive ("I have a question") would be
recalled into prompts for weeks.

Kinds, in priority order:
- ``explicit``: the spoken intent "remember that …" (stores what follows);
- ``name``: "my name is …", "call me Ana";
- ``preference``: "I like/love/hate/prefer …", "my favourite …";
- ``fact``: "I live in/work as/have …", "I'm a nurse", "my sister is …".
Questions are never captured, except as the object of an explicit request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MIN_WORDS = 3
MAX_STATEMENT_CHARS = 300

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_SPACES = re.compile(r"\s+")

_EXPLICIT = re.compile(
    r"^(?:(?:ok(?:ay)?|so|and|also|hey|oh)\b[,\s]*)*"
    r"(?:(?:can|could|will|would)\s+you\s+)?(?:please\s+)?"
    r"(?:remember|note|keep\s+in\s+mind)(?:\s+that|\s*:)\s*(?P<body>.+)$",
    re.IGNORECASE,
)
_NAME = re.compile(
    r"(?i:\b(?:my\s+name\s+is|my\s+name's|i\s+am\s+called|i'm\s+called)\s+\w)"
    r"|(?i:\bcall\s+me)\s+[A-Z]",  # "call me Ana", not "call me tomorrow": names are capitalised
)
_PREFERENCE = re.compile(
    r"\bi\s+(?:really\s+|absolutely\s+|do\s+|don't\s+|do\s+not\s+)?"
    r"(?:like|love|hate|prefer|enjoy|adore|dislike|can't\s+stand|cannot\s+stand)\s+"
    r"(?!it\b|that\b|this\b|them\b|you\b)\w"
    r"|\bmy\s+favou?rite\b",
    re.IGNORECASE,
)
_FACT = re.compile(
    r"\bi\s+(?:live|lived|grew\s+up|was\s+born|work|worked|study|studied)\s+(?:in|at|as|for|on)\b"
    r"|\bi(?:'m|\s+am)\s+(?:a|an)\s+(?!bit\b|little\b|lot\b|moment\b|second\b)\w"
    r"|\bi(?:'m|\s+am)\s+(?:allergic|vegetarian|vegan|married|divorced|retired|\d+\s+years?\s+old)"
    r"|\bi\s+have\s+(?:a|an|two|three|four|\d+|no)\s+"
    r"(?!question|idea|problem|minute|moment|second|clue|doubt|feeling|look)\w"
    r"|\bmy\s+(?:wife|husband|partner|son|daughter|kids?|children|mother|father|mom|mum|dad"
    r"|brother|sister|dog|cat|birthday|job|boss)(?:'s|\s+is|\s+are|\s+was|\s+works|\s+lives)\b",
    re.IGNORECASE,
)
_RULES = (("name", _NAME), ("preference", _PREFERENCE), ("fact", _FACT))


@dataclass(frozen=True, slots=True)
class Statement:
    text: str
    kind: str  # "explicit" | "name" | "preference" | "fact"


def normalize(text: str) -> str:
    """Collapse whitespace and trim; the form in which memories are stored and compared."""
    return _SPACES.sub(" ", text).strip()


def split_sentences(text: str) -> list[str]:
    return [s for s in (normalize(p) for p in _SENTENCE_END.split(text)) if s]


def classify(sentence: str) -> Statement | None:
    """The statement worth storing in ``sentence``, or None."""
    explicit = _EXPLICIT.match(sentence)
    if explicit:
        body = normalize(explicit["body"])
        return Statement(body, "explicit") if body else None
    if sentence.endswith("?") or len(sentence.split()) < MIN_WORDS:
        return None
    if len(sentence) > MAX_STATEMENT_CHARS:
        return None
    for kind, rule in _RULES:
        if rule.search(sentence):
            return Statement(sentence, kind)
    return None


def extract_statements(utterance: str) -> list[Statement]:
    """Every statement worth remembering in a user's utterance, in order."""
    found = (classify(sentence) for sentence in split_sentences(utterance))
    return [s for s in found if s is not None]


_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_PHONE_CANDIDATE = re.compile(r"(?<![\w@])\+?\d[\d\s().-]{5,}\d(?!\w)")
_MIN_PHONE_DIGITS = 7


def _phone(match: re.Match[str]) -> str:
    digits = sum(ch.isdigit() for ch in match[0])
    return "[phone]" if digits >= _MIN_PHONE_DIGITS else match[0]


def redact(text: str) -> str:
    """``text`` with e-mail addresses and phone numbers masked, for DEBUG logs.

    Errs towards masking: any run of seven or more digits with phone punctuation goes.
    """
    return _PHONE_CANDIDATE.sub(_phone, _EMAIL.sub("[email]", text))
