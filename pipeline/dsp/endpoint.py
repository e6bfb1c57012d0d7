"""End of turn from several weak cues: how long the silence has lasted, what an audio
end-of-turn model thinks, and how the interim transcript ends.

No single cue is good enough on real speech (measured on recorded people, see
``docs/turns.md``):

* silence alone: people pause 0.3-1.2 s inside a sentence, so any wait short enough to
  feel responsive cuts them off, and one long enough to be safe feels sluggish;
* the Whisper transcript: tiny.en puts a full stop after almost every phrase, so a full
  stop means little -- but a trailing comma, "and", "the", "um" reliably mean "more to
  come";
* Smart Turn (:mod:`pipeline.dsp.smart_turn`): hears falling intonation, yet calls many
  mid-passage pauses complete (0.96+ after "It was the best of times,") and once called a
  finished answer incomplete (0.01).

So the cues only pick *how long a silence* ends the turn:

=========================================  ====================
cues at this frame                          silence that ends it
=========================================  ====================
transcript ends mid-phrase ("," "and" ...)  ``incomplete_ms``
model "complete" + transcript "closed"      ``complete_ms``
model "complete", transcript silent         ``likely_ms``
model "incomplete", or no verdict yet       ``default_ms``
=========================================  ====================

The transcript is usually the *late* cue (a Whisper decode of the utterance takes
0.3-1.5 s here), so the model decides most turns; a full stop arriving late never
shortens a wait the model lengthened (Whisper puts one after every phrase).
:func:`silence_needed_ms` is pure and the turn detector calls it on every silent frame,
so a cue that arrives late shortens or lengthens the wait from that frame on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from parley.config import Settings

#: Words after which an English speaker is very rarely done: conjunctions, articles,
#: prepositions, fillers. A transcript ending in one is mid-phrase.
CONTINUATION_WORDS = frozenset(
    """and or but so because then um uh erm er hmm the a an to of in on at with from by
    into than as my your our their its if when while which whether although though every
    also""".split()
)
_SENTENCE_END = re.compile(r"[.?!]['\")\]]*$")
_OPEN_END = re.compile(r"(,|;|:|-|\.\.\.|…)['\")\]]*$")
_LAST_WORD = re.compile(r"([a-z']+)\W*$")

MODES = ("smart-turn", "silence")


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    """Silences (ms) that end a turn, by what the cues say. See the module docstring."""

    mode: str = "smart-turn"
    complete_ms: int = 450  # model and transcript agree: finished
    likely_ms: int = 700  # the model says finished, the transcript has not said otherwise
    default_ms: int = 1300  # the model says not finished, or has not answered yet
    incomplete_ms: int = 1800  # the transcript ends mid-phrase
    threshold: float = 0.5  # model probability that counts as "complete"
    silence_ms: int = 800  # mode "silence": the one wait (a mid-phrase transcript still extends it)
    reprobe_ms: int = 0  # a second verdict at this silence replaces the first (0 = none)


def transcript_cue(text: str | None) -> str | None:
    """"open" (mid-phrase), "closed" (a sentence end), or None (no transcript / no telling)."""
    if not text:
        return None
    stripped = text.strip().lower()
    if not stripped:
        return None
    if _OPEN_END.search(stripped):
        return "open"
    if stripped.rstrip("'\")]").endswith("?"):
        return "closed"  # a question is finished whatever its last word
    last = _LAST_WORD.search(stripped)
    if last is not None and last.group(1) in CONTINUATION_WORDS:
        return "open"
    if _SENTENCE_END.search(stripped):
        return "closed"
    return None


def silence_needed_ms(cfg: EndpointConfig, probability: float | None, transcript: str | None) -> int:
    """How much silence ends the turn, given the cues known now (None = not known yet)."""
    cue = transcript_cue(transcript)
    if cfg.mode == "silence":
        return cfg.incomplete_ms if cue == "open" else cfg.silence_ms
    if cue == "open":
        return cfg.incomplete_ms
    if probability is None or probability < cfg.threshold:
        return cfg.default_ms
    return cfg.complete_ms if cue == "closed" else cfg.likely_ms


def from_settings(settings: Settings) -> EndpointConfig:
    """The ``PARLEY_TURN_*`` settings as an :class:`EndpointConfig`."""
    return EndpointConfig(
        mode=settings.turn_model,
        complete_ms=settings.turn_complete_ms,
        likely_ms=settings.turn_likely_ms,
        default_ms=settings.turn_default_ms,
        incomplete_ms=settings.turn_incomplete_ms,
        threshold=settings.turn_threshold,
        silence_ms=settings.eot_silence_ms,
        reprobe_ms=settings.turn_reprobe_ms,
    )
