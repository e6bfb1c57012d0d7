"""The addressing policies, decision by decision."""

from __future__ import annotations

import pytest

from pipeline.agent.floor import Floor, Verdict, addressed_prompt, mentions, parse_yes


@pytest.mark.parametrize("text", [
    "Socrates, what is justice?", "so crates what do you think", "Socrities, tell us.",
    "What do you say, socrates?", "hey SOCRATES",
])
def test_fuzzy_mentions_catch_transcription_errors(text: str) -> None:
    assert mentions(text, ["Socrates"])


@pytest.mark.parametrize("text", [
    "What is justice?", "The crates are in the truck.", "Social rates went up again.",
    "I think it is time for lunch.", "", "That creates your eye this morning.",
])
def test_unnamed_talk_is_not_a_mention(text: str) -> None:
    assert not mentions(text, ["Socrates"])


def test_any_word_of_a_long_name_counts() -> None:
    assert mentions("Holmes, who did it?", ["Sherlock Holmes"])
    assert mentions("sherlock who did it", ["Sherlock Holmes"])
    assert not mentions("we went home", ["Sherlock Holmes"])
    assert mentions("Holmes, who did it?", ["Sherlock Holmes (fan-style)"])
    assert not mentions("I like your style", ["Sherlock Holmes (fan-style)"])


def test_mention_only_ignores_follow_ups() -> None:
    floor = Floor("mention_only", ["Socrates"])
    assert floor.decide("a", "Ann", "Socrates, is virtue teachable?", 0.0) is Verdict.ADDRESSED
    floor.agent_replied("a", "What do you think virtue is?", 5.0)
    assert floor.decide("a", "Ann", "Knowledge, I suppose.", 6.0) is Verdict.NOT_ADDRESSED


def test_follow_up_window_and_the_person_asked() -> None:
    floor = Floor("follow_up", ["Socrates"], follow_up_s=8.0)
    floor.agent_replied("a", "Virtue is knowledge.", 10.0)
    assert floor.decide("b", "Bob", "And courage too.", 15.0) is Verdict.ADDRESSED
    assert floor.decide("b", "Bob", "Anyway, lunch?", 30.0) is Verdict.NOT_ADDRESSED
    floor.agent_replied("a", "Ann, what do you think virtue is?", 40.0)
    assert floor.decide("a", "Ann", "Knowledge, I suppose.", 90.0) is Verdict.ADDRESSED
    floor.agent_replied("a", "Good. Is it teachable?", 100.0)
    floor.someone_else_spoke("b")
    assert floor.decide("a", "Ann", "Maybe.", 200.0) is Verdict.NOT_ADDRESSED


def test_open_floor_asks_the_model_and_parses_its_answer() -> None:
    floor = Floor("open_floor", ["Socrates"])
    assert floor.decide("a", "Ann", "What is the capital of France?", 0.0) is Verdict.ASK_LLM
    messages = addressed_prompt("Socrates", floor.recent)
    assert "Ann: What is the capital of France?" in messages[-1][1]
    assert parse_yes("Yes.") and parse_yes(" yes, it is") and not parse_yes("No") and not parse_yes("")


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError):
        Floor("whenever", ["Socrates"])
