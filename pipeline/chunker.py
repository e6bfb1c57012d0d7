"""Cut a streamed LLM reply into pieces the TTS can speak, as early as sounds natural.

Latency decides the first cut: the agent should start talking at the first clause
boundary (", ; :") once a few words have arrived, instead of waiting for a whole
sentence. After that, whole sentences sound better (Piper shapes intonation per
sentence), so later cuts wait for ". ! ?" followed by a space — which keeps "3.14"
together — and skip abbreviations such as "Dr." and "e.g.". A line break also ends a
piece, because models that slip into lists put one item per line.

Text is cleaned for the ear on the way out: markdown markers, bullets, link targets and
emoji would otherwise be read aloud ("asterisk asterisk") or mangled. The class is a pure,
synchronous state machine: no I/O, testable token by token.
"""

from __future__ import annotations

import re
import unicodedata

#: Words that end with a period without ending the sentence (lower case, no final dot).
ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "dr", "st", "prof", "sr", "jr", "vs", "mt", "fig", "approx", "ca"}
)
#: Words required before a clause boundary may end the first piece.
FIRST_CLAUSE_MIN_WORDS = 4
#: The first piece is cut at a phrase boundary (before one of these words) once it has
#: FIRST_CLAUSE_MIN_WORDS words, and after FIRST_PIECE_MAX_WORDS words at the latest: a
#: model that writes a long first sentence must not hold back the first audio.
PHRASE_STARTS = frozenset(
    {"and", "but", "or", "so", "because", "that", "which", "who", "when", "where", "while",
     "if", "though", "although", "since", "until", "unless", "whether"}
)
FIRST_PIECE_MAX_WORDS = 9
#: A piece longer than this is cut at its last space even without punctuation, so a
#: model that never punctuates still gets spoken.
MAX_CHARS = 240

#: End punctuation, then closing quotes/brackets/markdown emphasis, then a space.
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]*_]*(?=\s)")
_CLAUSE_END = re.compile(r"[,;:](?=\s)")
_DOTTED = re.compile(r"(?:[a-z]\.)+[a-z]")  # e.g, i.e, u.s, a.m (final dot excluded)
_INITIAL = re.compile(r"[A-HJ-Z]")  # "J. R. R." — but not "I", which often ends a sentence
_LETTER = re.compile(r"[^\W\d_]")
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_LINE_MARKER = re.compile(r"^\s*(?:[-*+•>]+|#+|\d+[.)])\s+", re.MULTILINE)
_MARKUP = re.compile(r"[*_`#~|]+")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+(?=[.,!?;:])")
_INVISIBLE = {"\u200d", "\ufe0f", "\ufe0e"}  # emoji joiners and variation selectors


class SentenceChunker:
    """Feed tokens with :meth:`push`; speak what it returns; :meth:`flush` at the end.

    One instance per reply or reused: :meth:`flush` resets it so the next reply again
    gets an early first piece.
    """

    def __init__(self) -> None:
        self._buffer = ""
        self._spoke = False

    def push(self, token: str) -> list[str]:
        """Add one streamed piece of text; return the pieces now ready to speak."""
        self._buffer += token
        ready: list[str] = []
        while (cut := self._next_cut()) is not None:
            piece, self._buffer = self._buffer[:cut], self._buffer[cut:]
            self._emit(piece, ready)
        return ready

    def flush(self) -> list[str]:
        """The reply is complete: return whatever is left, and reset for the next one."""
        ready: list[str] = []
        self._emit(self._buffer, ready)
        self._buffer = ""
        self._spoke = False
        return ready

    def _emit(self, raw: str, ready: list[str]) -> None:
        text = clean_for_speech(raw)
        if _has_word(text):
            ready.append(text)
            self._spoke = True

    def _next_cut(self) -> int | None:
        """Index just past the first boundary in the buffer, or None to keep waiting."""
        candidates = [self._sentence_cut(), self._newline_cut(), self._long_cut()]
        if not self._spoke:
            candidates += [self._clause_cut(), self._phrase_cut()]
        found = [c for c in candidates if c is not None]
        return min(found) if found else None

    def _sentence_cut(self) -> int | None:
        for match in _SENTENCE_END.finditer(self._buffer):
            if self._ends_sentence(match.start(), match.group()):
                return match.end()
        return None

    def _ends_sentence(self, start: int, punct: str) -> bool:
        """False for the period of an abbreviation or an initial, and for a lone number."""
        piece = self._buffer[:start]
        if not _LETTER.search(piece):
            return False  # "1." of a numbered list, or punctuation with no words yet
        if not punct.startswith(".") or punct.startswith(".."):
            return True
        word = piece.rsplit(None, 1)[-1].lstrip("\"'“‘([")
        lower = word.lower()
        return not (lower in ABBREVIATIONS or _DOTTED.fullmatch(lower) or _INITIAL.fullmatch(word))

    def _clause_cut(self) -> int | None:
        for match in _CLAUSE_END.finditer(self._buffer):
            if len(self._buffer[: match.start()].split()) >= FIRST_CLAUSE_MIN_WORDS:
                return match.end()
        return None

    def _phrase_cut(self) -> int | None:
        """Before a phrase-starting word after a few words, or after the word limit."""
        words = list(re.finditer(r"\S+(?=\s)", self._buffer))  # complete words only
        for i, word in enumerate(words):
            if i >= FIRST_CLAUSE_MIN_WORDS and word.group().lower() in PHRASE_STARTS:
                return word.start()
            if i + 1 >= FIRST_PIECE_MAX_WORDS:
                return word.end() + 1
        return None

    def _newline_cut(self) -> int | None:
        index = self._buffer.find("\n")
        while index != -1:
            if _has_word(clean_for_speech(self._buffer[:index])):
                return index + 1
            index = self._buffer.find("\n", index + 1)
        return None

    def _long_cut(self) -> int | None:
        if len(self._buffer) <= MAX_CHARS:
            return None
        space = self._buffer.rfind(" ", 0, MAX_CHARS)
        return space + 1 if space > 0 else MAX_CHARS


def clean_for_speech(text: str) -> str:
    """Drop what a TTS would read aloud or mispronounce: markdown, bullets, emoji."""
    text = _LINK.sub(r"\1", text)
    text = _LINE_MARKER.sub("", text)
    text = _MARKUP.sub("", text)
    text = "".join(ch for ch in text if not _is_pictograph(ch))
    return _SPACE_BEFORE_PUNCT.sub("", " ".join(text.split()))


def _is_pictograph(ch: str) -> bool:
    """Emoji, dingbats, arrows and the joiners that glue emoji together.

    Symbols below U+2100 ("°", "©") stay: the TTS reads those as words.
    """
    if ch in _INVISIBLE:
        return True
    return ord(ch) >= 0x2100 and unicodedata.category(ch) in ("So", "Sk", "Cs")


def _has_word(text: str) -> bool:
    return any(ch.isalnum() for ch in text)
