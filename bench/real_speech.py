"""A labelled turn-taking set of *real people* speaking, from redistributable packages.

No recording is committed: the audio is read at run time from installed packages.

* ``asterisk-core-sounds-en-wav`` (Debian, CC-BY-SA-3.0): Asterisk's prompts, recorded by
  Allison Smith, with their transcripts (``core-sounds-en.txt.gz``). 8 kHz telephone
  band. Used two ways: long prompts as they were read (their natural pauses between
  sentences and at commas are the intra-utterance pauses), and *phrases spliced from
  fragments* ("There are currently" ... "3" ... "other participants in the conference"),
  each fragment trimmed and the gaps between them set to 300-1200 ms -- a person
  hesitating mid-phrase, in a real voice.
* ``pyannote-audio`` (PyPI, MIT; installed ``--no-deps``, never imported): its bundled
  ``sample.wav`` is a real two-person telephone conversation at 16 kHz with a
  word-level reference (``sample.stm``); each speaker's turn is cut out at the STM times.

Every utterance is labelled with its reference text, where speech really ends, and its
intra-utterance pauses (silences of at least ``MIN_PAUSE_S`` before the true end). The
``held_out`` part (the whole conversation, and some prompts and phrases) is never used
to tune thresholds: report it separately.
"""

from __future__ import annotations

import gzip
import importlib.util
import re
import wave
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from pipeline.audio import RATE, resample

ASTERISK_DIR = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
ASTERISK_TEXT = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
MIN_PAUSE_S = 0.25  # shorter gaps are between words, not pauses
LEAD_S = 0.6  # silence before the utterance (the noise floor settles)
TAIL_S = 3.0  # silence after it: room for the longest end-of-turn wait and a reply
NOISE_DBFS = -62.0  # a quiet room, so the silence is not digital zero
#: Gaps put between spliced fragments, in order (cycled): the 300-1200 ms of the issue.
GAPS_MS = (300, 700, 1200, 500, 900, 400, 1000, 600, 800, 1100)

#: Spliced phrases: fragments said one after another with a hesitation between them.
PHRASES: dict[str, tuple[str, ...]] = {
    "callers": ("queue-quantity1", "digits/5", "queue-quantity2"),
    "new-messages": ("vm-youhave", "digits/2", "vm-INBOX", "vm-messages"),
    "participants": ("conf-thereare", "digits/3", "conf-otherinparty"),
    "hold-time": ("queue-holdtime", "queue-less-than", "digits/5", "queue-minutes"),
    "on-the-phone": ("vm-theperson", "digits/4", "digits/2", "vm-isonphone"),
    "letters": ("dir-pls-enter", "digits/3", "dir-last"),
    "mute": ("confbridge-mute-in", "vm-press", "digits/1"),
    "number": ("vm-num-i-have", "digits/5", "digits/5", "digits/1", "digits/2"),
    # held out
    "caller-number": ("queue-thereare", "digits/7"),
    "if-correct": ("if-correct-press", "digits/1"),
    "leave": ("confbridge-leave-in", "vm-press", "digits/8"),
    "old-messages": ("vm-youhave", "digits/3", "vm-Old", "vm-messages"),
}
#: Prompts read in one go (their own natural pauses).
PROMPTS = (
    "demo-echotest", "conf-adminmenu", "basic-pbx-ivr-main", "queue-youarenext", "ss-noservice",
    "pbx-invalid", "tt-weasels", "vm-nobodyavail", "privacy-unident", "dir-intro", "vm-msginstruct",
    # held out
    "vm-options", "queue-periodic-announce", "vm-sorry", "conf-onlyperson", "demo-nomatch",
    "vm-instructions",
)
HELD_OUT = frozenset(
    {"caller-number", "if-correct", "leave", "old-messages", "vm-options", "queue-periodic-announce",
     "vm-sorry", "conf-onlyperson", "demo-nomatch", "vm-instructions"}
)
#: (speaker, start s, end s) turns of the pyannote sample conversation, from sample.stm.
CONVERSATION_TURNS = (
    ("diane", 8.40, 9.82),
    ("diane", 10.76, 14.20),
    ("sheila", 14.42, 17.78),
    ("diane", 17.77, 21.50),
    ("sheila", 21.91, 28.43),
)


@dataclass(frozen=True)
class Utterance:
    """One labelled utterance, ready to play as a microphone (48 kHz mono int16)."""

    name: str
    source: str  # "asterisk-phrase" | "asterisk-prompt" | "conversation" | "piper"
    pcm: np.ndarray
    text: str  # reference transcript
    start_s: float  # first voiced sample
    end_s: float  # true end of speech: the turn is over here
    pauses: tuple[tuple[float, float], ...] = field(default=())  # (start s, length s) inside it
    held_out: bool = False
    hesitations: tuple[tuple[float, float], ...] = field(default=())  # (start s, end s) of "um"s

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / RATE


class MissingSpeech(RuntimeError):
    """The package holding the recordings is not installed."""


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").copy(), w.getframerate()


def _levels_db(pcm: np.ndarray, rate: int, frame_s: float = 0.01) -> np.ndarray:
    n = int(rate * frame_s)
    x = pcm[: len(pcm) // n * n].astype(np.float64).reshape(-1, n) / 32768.0
    return 10.0 * np.log10((x * x).mean(axis=1) + 1e-12)


def voiced_frames(pcm: np.ndarray, rate: int) -> np.ndarray:
    """10 ms frames louder than 35 dB under the peak frame (and above -50 dBFS)."""
    db = _levels_db(pcm, rate)
    return db > max(float(db.max()) - 35.0, -50.0)


def find_pauses(pcm: np.ndarray, rate: int) -> tuple[list[tuple[float, float]], float, float]:
    """(pauses, first voiced s, last voiced s) of a recording, from frame levels."""
    voiced = np.nonzero(voiced_frames(pcm, rate))[0]
    if voiced.size == 0:
        return [], 0.0, 0.0
    gaps = np.diff(voiced) - 1
    pauses = [
        (float((voiced[i] + 1) * 0.01), float(g * 0.01))
        for i, g in enumerate(gaps)
        if g * 0.01 >= MIN_PAUSE_S
    ]
    return pauses, float(voiced[0] * 0.01), float((voiced[-1] + 1) * 0.01)


def trim(pcm: np.ndarray, rate: int) -> np.ndarray:
    _, start, end = find_pauses(pcm, rate)
    return pcm[int(start * rate) : int(end * rate)]


@lru_cache(maxsize=1)
def asterisk_texts() -> dict[str, str]:
    """Prompt name -> transcript, from the package's own list."""
    if not ASTERISK_TEXT.is_file() or not ASTERISK_DIR.is_dir():
        raise MissingSpeech("real speech needs the Debian package asterisk-core-sounds-en-wav")
    texts = {}
    for line in gzip.open(ASTERISK_TEXT, "rt", encoding="utf-8", errors="replace"):
        name, sep, text = line.partition(":")
        if sep:
            texts[name.strip()] = text.strip()
    return texts


def _fragment_text(name: str) -> str:
    text = asterisk_texts()[name]
    return re.sub(r"\.\.\.|\(.*?\)", " ", text).strip()


def finish(name: str, source: str, pcm16: np.ndarray, rate: int, text: str,
           pauses: list[tuple[float, float]] | None = None, held_out: bool | None = None) -> Utterance:
    """Pad, resample to 48 kHz, add a quiet room, and label (times in the padded audio).

    ``pauses`` (s, in ``pcm16``) are the labels when the caller knows them (it made them);
    otherwise they are read from the audio. ``held_out`` defaults to this set's own list.
    """
    found, start, end = find_pauses(pcm16, rate)
    lead, tail = np.zeros(int(LEAD_S * rate), np.int16), np.zeros(int(TAIL_S * rate), np.int16)
    pcm = resample(np.concatenate([lead, pcm16, tail]), rate, RATE).astype(np.float64)
    rng = np.random.default_rng(sum(map(ord, name)))
    pcm += rng.standard_normal(len(pcm)) * 32768.0 * 10 ** (NOISE_DBFS / 20)
    pcm48 = np.clip(np.rint(pcm), -32768, 32767).astype(np.int16)
    labelled = found if pauses is None else pauses
    inside = tuple((LEAD_S + s, d) for s, d in labelled if s < end)
    if held_out is None:
        held_out = name in HELD_OUT or source == "conversation"
    return Utterance(name, source, pcm48, " ".join(text.split()), LEAD_S + start, LEAD_S + end,
                     inside, held_out)


def asterisk_phrase(name: str, fragments: tuple[str, ...], gaps_ms: list[int]) -> Utterance:
    """Fragments trimmed and joined by the given gaps (ms)."""
    parts: list[np.ndarray] = []
    for i, fragment in enumerate(fragments):
        pcm, rate = _read_wav(ASTERISK_DIR / f"{fragment}.wav")
        if i:
            parts.append(np.zeros(int(gaps_ms[i - 1] * rate / 1000), np.int16))
        parts.append(trim(pcm, rate))
    text = " ".join(_fragment_text(f) for f in fragments)
    return finish(name, "asterisk-phrase", np.concatenate(parts), rate, text)


def asterisk_prompt(name: str) -> Utterance:
    pcm, rate = _read_wav(ASTERISK_DIR / f"{name}.wav")
    return finish(name, "asterisk-prompt", trim(pcm, rate), rate, _fragment_text(name))


def conversation_dir() -> Path:
    """``pyannote/audio/sample`` of the installed pyannote-audio wheel (never imported)."""
    spec = importlib.util.find_spec("pyannote.audio")
    if spec is None or not spec.submodule_search_locations:
        raise MissingSpeech("real conversation needs pyannote-audio (pip install --no-deps pyannote-audio)")
    return Path(next(iter(spec.submodule_search_locations))) / "sample"


def conversation_turns() -> list[Utterance]:
    """Each speaker turn of the sample conversation (the other voice may overlap its edges)."""
    folder = conversation_dir()
    pcm, rate = _read_wav(folder / "sample.wav")
    stm = [line.split(maxsplit=5) for line in (folder / "sample.stm").read_text().splitlines() if line.strip()]
    out = []
    for i, (speaker, a, b) in enumerate(CONVERSATION_TURNS):
        words = [row[5] for row in stm if row[2].lower() == speaker and a - 0.05 <= float(row[3]) < b]
        clip = pcm[int(a * rate) : int(b * rate)]
        out.append(finish(f"conversation-{i}-{speaker}", "conversation", clip, rate, " ".join(words)))
    return out


def real_utterances() -> list[Utterance]:
    """The whole real-speech set, tuning and held-out parts (see ``Utterance.held_out``)."""
    out = []
    gap = 0
    for name, fragments in PHRASES.items():
        gaps = [GAPS_MS[(gap + k) % len(GAPS_MS)] for k in range(len(fragments) - 1)]
        gap += len(fragments) - 1
        out.append(asterisk_phrase(name, fragments, gaps))
    out += [asterisk_prompt(name) for name in PROMPTS]
    out += conversation_turns()
    return out


_NUMBERS = "zero one two three four five six seven eight nine ten".split()


def normalize_words(text: str) -> list[str]:
    """Lower-case words for WER: digits spelled out, punctuation dropped."""
    text = text.lower().replace("-", " ")
    text = re.sub(r"\b(\d)\b", lambda m: _NUMBERS[int(m.group(1))], text)
    return re.sub(r"[^a-z0-9' ]+", " ", text).split()


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(edit distance in words, reference words): WER = errors / words."""
    ref, hyp = normalize_words(reference), normalize_words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1], len(ref)


def comma_pause(pause_ms: int = 600) -> Utterance:
    """A real sentence with a ``pause_ms`` pause at its comma: "Please press 1 to mute or
    unmute yourself, [pause] 2 to lock or unlock the conference." (Allison's own reading,
    the natural pause after "yourself," stretched.)"""
    pcm, rate = _read_wav(ASTERISK_DIR / "conf-adminmenu.wav")
    pcm = trim(pcm, rate)
    pauses, _, _ = find_pauses(pcm, rate)
    (comma, length), (stop, _) = pauses[0], pauses[1]
    first = pcm[: int((comma + 0.03) * rate)]
    second = pcm[int((comma + length - 0.03) * rate) : int((stop + 0.03) * rate)]
    gap = np.zeros(int((pause_ms - 60) * rate / 1000), np.int16)
    text = "Please press 1 to mute or unmute yourself, 2 to lock or unlock the conference."
    return finish(f"comma-pause-{pause_ms}", "asterisk-prompt", np.concatenate([first, gap, second]), rate, text)
