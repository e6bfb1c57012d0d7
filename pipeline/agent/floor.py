"""Who holds the floor in a room: is the agent being addressed? A pure decision module.

Three policies, chosen per room:

``mention_only`` (default)
    The agent answers only when a transcript names it: the persona's name, any of its
    words (Sherlock *Holmes*), or a wake word. Whisper misspells names ("Socrities", "So
    crates"), so a word — or two adjacent words run together — within a small edit
    distance of a name counts.
``follow_up``
    Also answers within ``follow_up_s`` after it finished speaking (a conversation with it
    is under way), and when the person it asked a question answers, whenever that is.
``open_floor``
    Anything unnamed is put to the LLM in a tiny prompt (:func:`addressed_prompt`): "is
    this addressed to NAME? yes/no". The caller runs it, so this module stays I/O-free.

The agent never *starts* speaking while a human holds the floor; that gate is in the room's
audio path (``media_server.rooms``), not here, because it is decided per 20 ms frame.
"""

from __future__ import annotations

import difflib
import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

POLICIES = ("mention_only", "follow_up", "open_floor")
MATCH_RATIO = 0.8  # difflib similarity that counts a word as the name (Socrities ~ socrates) ...
SURE_RATIO = 0.9  # ... if it also starts with the name's letter; "creates" (0.8) must not
MIN_NAME_LEN = 4  # shorter names would match too many everyday words fuzzily
_WORD = re.compile(r"[a-z']+")
_NOTE = re.compile(r"\(.*?\)")


class Verdict(enum.Enum):
    ADDRESSED = "addressed"
    NOT_ADDRESSED = "not-addressed"
    ASK_LLM = "ask-llm"  # open_floor: let the language model judge


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def spoken_name(name: str) -> str:
    """The name as people say it: "Sherlock Holmes (fan-style)" -> "Sherlock Holmes"."""
    return " ".join(_NOTE.sub("", name).split())


def name_words(names: Iterable[str]) -> list[str]:
    """Each name and each long enough word of it, lower case ("Sherlock Holmes" -> 3).

    A parenthesised note is not part of the name: "Sherlock Holmes (fan-style)" must not
    wake on "style".
    """
    out: list[str] = []
    for name in (spoken_name(n) for n in names):
        full = "".join(words(name))
        parts = [w for w in words(name) if len(w) >= MIN_NAME_LEN]
        for candidate in (full, *parts):
            if candidate and candidate not in out:
                out.append(candidate)
    return out


def mentions(text: str, names: Iterable[str]) -> bool:
    """True if ``text`` names one of ``names``, allowing for transcription errors."""
    targets = name_words(names)
    spoken = words(text)
    candidates = spoken + [a + b for a, b in zip(spoken, spoken[1:], strict=False)]
    for word in candidates:
        for target in targets:
            if word == target:
                return True
            if abs(len(word) - len(target)) <= 1 and len(word) >= MIN_NAME_LEN:
                ratio = difflib.SequenceMatcher(None, word, target).ratio()
                if ratio >= SURE_RATIO or (ratio >= MATCH_RATIO and word[0] == target[0]):
                    return True
    return False


def is_question(text: str) -> bool:
    return text.rstrip().rstrip("\"')").endswith("?")


def addressed_prompt(agent_name: str, recent: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(role, content) messages asking whether the last line is addressed to the agent."""
    lines = "\n".join(f"{speaker}: {text}" for speaker, text in recent[-4:])
    return [
        ("system", f"You watch a group conversation that includes an AI named {agent_name}. "
                   f"Answer only yes or no: is the last line spoken to {agent_name}?"),
        ("user", lines),
    ]


def parse_yes(answer: str) -> bool:
    first = words(answer)[:1]
    return first == ["yes"]


@dataclass
class Floor:
    """The addressing state of one room's agent."""

    policy: str
    names: list[str]
    follow_up_s: float = 8.0
    agent_done_at: float | None = None  # when the agent last finished speaking
    asked: str | None = None  # participant the agent last asked a question
    recent: list[tuple[str, str]] = field(default_factory=list)  # (speaker, text)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")

    def decide(self, participant_id: str, speaker: str, text: str, now: float) -> Verdict:
        """Is ``text`` (by ``speaker``, just finished at ``now``) addressed to the agent?"""
        self.recent = [*self.recent[-7:], (speaker, text)]
        if not words(text):
            return Verdict.NOT_ADDRESSED
        if mentions(text, self.names):
            return Verdict.ADDRESSED
        if self.policy == "follow_up":
            if self.asked == participant_id:
                return Verdict.ADDRESSED
            recent = self.agent_done_at is not None and now - self.agent_done_at <= self.follow_up_s
            return Verdict.ADDRESSED if recent else Verdict.NOT_ADDRESSED
        if self.policy == "open_floor":
            return Verdict.ASK_LLM
        return Verdict.NOT_ADDRESSED

    def agent_replied(self, participant_id: str, reply: str, now: float) -> None:
        """The agent finished answering ``participant_id`` with ``reply``."""
        self.agent_done_at = now
        self.asked = participant_id if is_question(reply) else None
        self.recent = [*self.recent[-7:], (self.names[0] if self.names else "agent", reply)]

    def someone_else_spoke(self, participant_id: str) -> None:
        """A turn by another person closes the question the agent asked."""
        if self.asked is not None and participant_id != self.asked:
            self.asked = None
