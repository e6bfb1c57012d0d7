"""SentenceChunker: early first clause, whole sentences after, text cleaned for speech."""

from __future__ import annotations

import pytest

from pipeline.chunker import MAX_CHARS, SentenceChunker, clean_for_speech


def chunk(text: str, step: int = 3) -> list[str]:
    """Stream ``text`` in ``step``-character tokens, then flush: all pieces in order."""
    chunker = SentenceChunker()
    pieces: list[str] = []
    for start in range(0, len(text), step):
        pieces += chunker.push(text[start : start + step])
    return pieces + chunker.flush()


def test_first_piece_ends_at_a_clause_once_enough_words_arrived() -> None:
    chunker = SentenceChunker()
    assert chunker.push("Well, my dear friend,") == []  # the comma may still be "3,000"
    assert chunker.push(" that") == ["Well, my dear friend,"]


def test_short_first_clause_waits_for_the_sentence() -> None:
    assert chunk("Yes, I do. Then, after that, we went home.") == [
        "Yes, I do.",
        "Then, after that, we went home.",
    ]


def test_after_the_first_piece_only_sentences_end_pieces() -> None:
    text = "Well, my dear friend, that is a question. Tell me, my good man, what you think of it."
    assert chunk(text) == [
        "Well, my dear friend,",
        "that is a question.",
        "Tell me, my good man, what you think of it.",
    ]


def test_abbreviations_do_not_end_sentences() -> None:
    text = "Dr. Watson met Mr. Holmes on St. James Street, e.g. near the park. Then they left."
    assert chunk(text) == [
        "Dr. Watson met Mr. Holmes on St. James Street,",
        "e.g. near the park.",
        "Then they left.",
    ]


def test_decimals_stay_whole() -> None:
    assert chunk("Pi is 3.14 and e is 2.71. Good.", step=1) == [
        "Pi is 3.14 and e is 2.71.",
        "Good.",
    ]


def test_initials_are_not_sentence_ends_but_i_is() -> None:
    assert chunk("So do I. J. R. R. Tolkien wrote it. Fine.") == [
        "So do I.",
        "J. R. R. Tolkien wrote it.",
        "Fine.",
    ]


def test_exclamations_questions_and_closing_quotes() -> None:
    assert chunk('He said "stop!" Did he? Yes.') == ['He said "stop!"', "Did he?", "Yes."]


def test_flush_returns_the_rest_and_resets_for_the_next_reply() -> None:
    chunker = SentenceChunker()
    assert chunker.push("It is done") == []
    assert chunker.flush() == ["It is done"]
    assert chunker.flush() == []
    chunker.push("Now, at the start of the next reply,")
    assert chunker.push(" again") == ["Now, at the start of the next reply,"]


@pytest.mark.parametrize("step", [1, 2, 5, 1000])
def test_result_does_not_depend_on_token_sizes(step: int) -> None:
    text = "Hello there, my old friend, how are you? I am fine. The year was 1999. Goodbye!"
    assert chunk(text, step) == [
        "Hello there, my old friend,",
        "how are you?",
        "I am fine.",
        "The year was 1999.",
        "Goodbye!",
    ]


def test_markdown_and_emoji_are_not_spoken() -> None:
    text = (
        "**Sure!** Here are ideas:\n1. Walk the *dog* 🐕.\n- Call [mom](http://x.org) 👍🏽\n# Done"
    )
    assert chunk(text) == ["Sure!", "Here are ideas:", "Walk the dog.", "Call mom", "Done"]


def test_symbols_that_read_as_words_are_kept() -> None:
    assert clean_for_speech("It was 20°C, © 2024 ✨") == "It was 20°C, © 2024"


def test_punctuation_only_pieces_are_dropped() -> None:
    assert chunk("🙂\n\n---\nOk then.") == ["Ok then."]


def test_unpunctuated_rambling_is_cut_at_a_space() -> None:
    words = " ".join(["word"] * 200)
    pieces = chunk(words, step=7)
    assert len(pieces) > 1
    assert all(len(p) <= MAX_CHARS for p in pieces)
    assert " ".join(pieces) == words


def test_long_first_sentence_is_cut_at_a_phrase_boundary_or_word_limit() -> None:
    def pieces(text: str) -> list[str]:
        chunker = SentenceChunker()
        out = [p for token in text.replace(" ", " |").split("|") for p in chunker.push(token)]
        return out + chunker.flush()

    assert pieces("The meaning of a good life is that it is a pursuit of virtue.")[0] == (
        "The meaning of a good life is"
    )
    first = pieces("One two three four five six seven eight nine ten eleven twelve.")[0]
    assert first == "One two three four five six seven eight nine"
    # only the first piece is cut early; later ones wait for whole sentences
    assert pieces("Yes. The meaning of a good life is that it is a pursuit of virtue.") == [
        "Yes.", "The meaning of a good life is that it is a pursuit of virtue."
    ]
