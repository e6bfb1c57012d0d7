"""Turn a persona, the conversation so far and the user's new words into LLM messages.

The prompt has a token budget (the model's context minus room for the reply). What must
be there always is: the persona's system prompt — with the current emotion wording, the
storyteller's plot node and the caller's memories — and the user's new words. Recent
history fills the rest, newest first; when it does not fit, the oldest *whole turns* go
(a user message with the replies to it), because half a turn confuses small models more
than a missing one. Messages are never cut in the middle.

The same inputs also set how the persona speaks: :func:`generation_params` and
:func:`speech_speed`. Emotion is one number, 0 (calm) .. 1 (lively), set by the client.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from personas import Persona
from pipeline.backends.base import GenerationParams, Message

#: Chat templates wrap each message in role markers ("<|im_start|>user\n…<|im_end|>\n"
#: in SmolLM2's ChatML: 4-5 tokens); counted per message so the budget holds in practice.
MESSAGE_OVERHEAD_TOKENS = 5
CALM_BELOW = 0.35
LIVELY_ABOVE = 0.65
#: Temperature added at emotion 1 (nothing at 0.5 and below): livelier, less predictable.
EMOTION_TEMPERATURE_BOOST = 0.2
#: Speech pace at emotion 0, 0.5 and 1 (multiplied by the persona's own speed).
SLOWEST, NEUTRAL, FASTEST = 0.9, 1.0, 1.15
SPEED_LIMITS = (0.5, 2.0)
DEFAULT_EMOTION_STYLES = {
    "calm": "Speak gently and calmly, at an unhurried pace.",
    "neutral": "",
    "lively": "Speak with energy and warmth, and let your enthusiasm show.",
}

CountTokens = Callable[[str], int]


def build_messages(
    persona: Persona,
    history: Sequence[Message],
    user_text: str,
    *,
    memories: Sequence[str] = (),
    budget_tokens: int,
    count_tokens: CountTokens,
    emotion: float | None = None,
    plot_node: str | None = None,
) -> list[Message]:
    """System prompt, as much recent history as fits ``budget_tokens``, then the user.

    ``count_tokens`` should be the LLM backend's own (``LLM.count_tokens``). The system
    prompt and the user's words are kept even if they alone exceed the budget.

    Raises:
        ValueError: ``plot_node`` is not one of the persona's plot nodes, or ``emotion``
            is not a number within 0..1.
    """
    system = Message("system", system_prompt(persona, memories, emotion, plot_node))
    user = Message("user", user_text)
    left = budget_tokens - _cost(system, count_tokens) - _cost(user, count_tokens)
    kept: list[Message] = []
    for turn in reversed(_turns(history)):
        cost = sum(_cost(m, count_tokens) for m in turn)
        if cost > left:
            break
        kept[:0] = turn
        left -= cost
    return [system, *kept, user]


def system_prompt(
    persona: Persona,
    memories: Sequence[str] = (),
    emotion: float | None = None,
    plot_node: str | None = None,
) -> str:
    """The persona's instructions plus the parts that change during a call."""
    parts = [persona.system_prompt.strip()]
    if emotion is not None:
        parts.append(emotion_wording(persona, emotion))
    if plot_node is not None:
        parts.append(f"In the story right now: {_plot_text(persona, plot_node)}")
    remembered = [m.strip() for m in memories if m.strip()]
    if remembered and persona.memory_policy != "none":
        parts.append("What you remember about the caller: " + " ".join(_sentences(remembered)))
    return "\n".join(p for p in parts if p)


def emotion_band(emotion: float) -> str:
    """The band of an emotion value 0..1: "calm", "neutral" or "lively"."""
    value = _checked_emotion(emotion)
    if value < CALM_BELOW:
        return "calm"
    return "lively" if value > LIVELY_ABOVE else "neutral"


def emotion_wording(persona: Persona, emotion: float) -> str:
    """The sentence added to the system prompt for this emotion (persona may override)."""
    band = emotion_band(emotion)
    return persona.emotion_styles.get(band, DEFAULT_EMOTION_STYLES[band])


def generation_params(persona: Persona, emotion: float | None = None) -> GenerationParams:
    """Sampling settings for the persona; lively emotion raises the temperature a little."""
    temperature = persona.temperature
    if emotion is not None:
        lift = max(0.0, _checked_emotion(emotion) - 0.5) * 2.0
        temperature = min(2.0, temperature + EMOTION_TEMPERATURE_BOOST * lift)
    return GenerationParams(temperature=temperature, max_tokens=persona.max_tokens)


def speech_speed(persona: Persona, emotion: float | None) -> float:
    """TTS speed for the persona: calm speaks slower (0.9×), lively faster (1.15×)."""
    pace = NEUTRAL
    if emotion is not None:
        value = _checked_emotion(emotion)
        if value <= 0.5:
            pace = SLOWEST + (NEUTRAL - SLOWEST) * value / 0.5
        else:
            pace = NEUTRAL + (FASTEST - NEUTRAL) * (value - 0.5) / 0.5
    low, high = SPEED_LIMITS
    return min(high, max(low, persona.speed * pace))


def _turns(history: Sequence[Message]) -> list[list[Message]]:
    """Group history into turns: each user message with what follows it.

    Messages before the first user message (if any) form a turn of their own.
    """
    turns: list[list[Message]] = []
    for message in history:
        if message.role == "user" or not turns:
            turns.append([])
        turns[-1].append(message)
    return turns


def _cost(message: Message, count_tokens: CountTokens) -> int:
    return count_tokens(message.content) + MESSAGE_OVERHEAD_TOKENS


def _plot_text(persona: Persona, node: str) -> str:
    try:
        return persona.plot_nodes[node]
    except KeyError:
        known = ", ".join(sorted(persona.plot_nodes)) or "none"
        raise ValueError(
            f"persona {persona.id!r} has no plot node {node!r} (known: {known})"
        ) from None


def _checked_emotion(emotion: float) -> float:
    if isinstance(emotion, bool) or not (math.isfinite(emotion) and 0.0 <= emotion <= 1.0):
        raise ValueError(f"emotion must be a number within 0..1, got {emotion!r}")
    return float(emotion)


def _sentences(items: list[str]) -> list[str]:
    """Memory snippets as sentences, so the prompt stays prose (no list to imitate)."""
    return [s if s[-1] in ".!?" else s + "." for s in items]
