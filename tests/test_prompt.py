"""Prompt building: budget, whole turns dropped oldest first, persona settings."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from parley.config import Settings
from personas import get_persona
from pipeline.backends import registry
from pipeline.backends.base import Message
from pipeline.prompt import (
    MESSAGE_OVERHEAD_TOKENS,
    build_messages,
    emotion_band,
    generation_params,
    speech_speed,
    system_prompt,
)


def words(text: str) -> int:
    """A simple, exact count function: one token per whitespace-separated word."""
    return len(text.split())


def conversation(turns: int) -> list[Message]:
    history = [Message("assistant", "Greetings, friend.")]
    for n in range(turns):
        history += [
            Message("user", f"question number {n} about virtue and the good life"),
            Message("assistant", f"answer number {n}: virtue is knowledge, friend. Why ask?"),
        ]
    return history


def cost(messages: list[Message], count: Callable[[str], int]) -> int:
    return sum(count(m.content) + MESSAGE_OVERHEAD_TOKENS for m in messages)


@pytest.fixture(scope="module")
def model_count() -> Callable[[str], int]:
    """The local LLM's real tokenizer."""
    count: Callable[[str], int] = registry.get("llm", "local", Settings(llm="local")).count_tokens
    return count


def check_trimmed(history: list[Message], messages: list[Message]) -> None:
    """Kept history is a suffix of the original, starting at a whole turn."""
    kept = messages[1:-1]
    assert history[len(history) - len(kept) :] == kept
    assert not kept or kept[0].role == "user" or len(kept) == len(history)


@pytest.mark.parametrize("budget", [60, 120, 200, 400, 10_000])
def test_budget_respected_with_simple_count(budget: int) -> None:
    persona = get_persona("socrates")
    history = conversation(8)
    messages = build_messages(
        persona, history, "And courage?", budget_tokens=budget, count_tokens=words
    )
    fixed = cost([messages[0], messages[-1]], words)
    assert cost(messages, words) <= max(budget, fixed)
    check_trimmed(history, messages)


@pytest.mark.models
@pytest.mark.parametrize("budget", [150, 300, 450])
def test_budget_respected_with_model_tokenizer(
    budget: int, model_count: Callable[[str], int]
) -> None:
    persona = get_persona("socrates")
    history = conversation(20)
    messages = build_messages(
        persona, history, "What is courage?", budget_tokens=budget, count_tokens=model_count
    )
    assert cost(messages, model_count) <= budget
    assert 0 < len(messages) - 2 < len(history)  # some history kept, the oldest dropped
    check_trimmed(history, messages)


def test_everything_fits_when_budget_is_large() -> None:
    history = conversation(3)
    messages = build_messages(
        get_persona("holmes"), history, "Well?", budget_tokens=100_000, count_tokens=words
    )
    assert messages[1:-1] == history


def test_system_and_user_kept_even_over_budget() -> None:
    persona = get_persona("socrates")
    messages = build_messages(persona, conversation(2), "Why?", budget_tokens=1, count_tokens=words)
    assert [m.role for m in messages] == ["system", "user"]
    assert messages[0].content.startswith(persona.system_prompt)
    assert messages[-1].content == "Why?"


def test_a_turn_too_big_to_fit_stops_older_ones_from_filling_in() -> None:
    history = [
        Message("user", "short"),
        Message("assistant", "short"),
        Message("user", "long " * 100),
        Message("assistant", "long " * 100),
        Message("user", "recent"),
        Message("assistant", "recent"),
    ]
    persona = get_persona("socrates")
    fixed = cost([Message("system", system_prompt(persona)), Message("user", "now")], words)
    budget = fixed + 2 * (1 + MESSAGE_OVERHEAD_TOKENS) + 2 * (1 + MESSAGE_OVERHEAD_TOKENS)
    messages = build_messages(persona, history, "now", budget_tokens=budget, count_tokens=words)
    assert messages[1:-1] == history[4:]


def test_memories_emotion_and_plot_node_reach_the_system_prompt() -> None:
    teller = get_persona("storyteller")
    node = next(iter(teller.plot_nodes))
    text = build_messages(
        teller,
        [],
        "Go on",
        memories=["The caller's name is Ada"],
        budget_tokens=1000,
        count_tokens=words,
        emotion=0.9,
        plot_node=node,
    )[0].content
    assert teller.plot_nodes[node] in text
    assert teller.emotion_styles["lively"] in text
    # storyteller's memory policy is "none": memories are not used
    assert "Ada" not in text
    assert "Ada" in system_prompt(get_persona("socrates"), ["The caller's name is Ada"])


def test_unknown_plot_node_names_the_known_ones() -> None:
    teller = get_persona("storyteller")
    with pytest.raises(ValueError, match=next(iter(teller.plot_nodes))):
        system_prompt(teller, plot_node="moon-base")


def test_emotion_bands_and_default_wording() -> None:
    assert [emotion_band(e) for e in (0.0, 0.3, 0.5, 0.7, 1.0)] == [
        "calm",
        "calm",
        "neutral",
        "lively",
        "lively",
    ]
    holmes = get_persona("holmes")  # no emotion_styles of its own
    assert "calm" in system_prompt(holmes, emotion=0.0).lower()
    assert system_prompt(holmes, emotion=0.5) == system_prompt(holmes)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_emotion_out_of_range_is_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match="emotion"):
        speech_speed(get_persona("socrates"), bad)


def test_generation_params_follow_persona_and_emotion() -> None:
    persona = get_persona("socrates")
    base = generation_params(persona)
    assert (base.temperature, base.max_tokens) == (persona.temperature, persona.max_tokens)
    assert generation_params(persona, 0.2).temperature == base.temperature
    assert base.temperature < generation_params(persona, 1.0).temperature <= base.temperature + 0.25


def test_speech_speed_rises_with_emotion() -> None:
    persona = get_persona("socrates")
    speeds = [speech_speed(persona, e) for e in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert speeds == sorted(speeds)
    assert speeds[0] == pytest.approx(0.9 * persona.speed)
    assert speeds[2] == pytest.approx(persona.speed) == speech_speed(persona, None)
    assert speeds[-1] == pytest.approx(1.15 * persona.speed)
