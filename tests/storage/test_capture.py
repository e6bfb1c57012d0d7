"""Capture rules (which statements become memories) and log redaction; pure functions."""

from __future__ import annotations

import pytest

from pipeline.memory.capture import Statement, extract_statements, redact


@pytest.mark.parametrize(
    ("said", "expected"),
    [
        ("Hi there. My name is Ana and I live in Lisbon.",
         [Statement("My name is Ana and I live in Lisbon.", "name")]),
        ("Call me Ishmael, please.", [Statement("Call me Ishmael, please.", "name")]),
        ("I really love green tea with honey.",
         [Statement("I really love green tea with honey.", "preference")]),
        ("My favourite book is Dune.", [Statement("My favourite book is Dune.", "preference")]),
        ("I work as a nurse in Porto.", [Statement("I work as a nurse in Porto.", "fact")]),
        ("I have two cats and a dog.", [Statement("I have two cats and a dog.", "fact")]),
        ("My sister lives in Berlin.", [Statement("My sister lives in Berlin.", "fact")]),
        ("Okay, remember that the code word is apricot.",
         [Statement("the code word is apricot.", "explicit")]),
        ("Could you please remember that my train leaves at nine?",
         [Statement("my train leaves at nine?", "explicit")]),
    ],
)
def test_important_statements_are_captured(said: str, expected: list[Statement]):
    assert extract_statements(said) == expected


@pytest.mark.parametrize(
    "said",
    [
        "Call me tomorrow.",
        "I have a question.",
        "What is my name?",
        "Do you like cats?",
        "I like it.",
        "I'm a bit tired today.",
        "Remember when we met?",
        "The weather is nice.",
        "",
    ],
)
def test_small_talk_and_questions_are_not(said: str):
    assert extract_statements(said) == []


def test_several_statements_in_one_turn():
    said = "I live in Oslo. I hate rain. Anyway, how are you?"
    assert [s.kind for s in extract_statements(said)] == ["fact", "preference"]


def test_redact_masks_emails_and_phone_numbers_only():
    text = "Mail ana.b+x@example.co.uk or call +1 (555) 123-4567 before 12.05 in 2031."
    assert redact(text) == "Mail [email] or call [phone] before 12.05 in 2031."
    assert redact("my number is 0612345678") == "my number is [phone]"
