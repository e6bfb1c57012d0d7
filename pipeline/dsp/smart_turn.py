"""Smart Turn v3.2: an audio model that says whether a speaker has finished their turn.

It listens to *how* the utterance ends (intonation, a trailing-off or held syllable,
the rhythm of the last words) rather than to the words, so it complements the transcript
cues in :mod:`pipeline.dsp.endpoint`. Measured alone on real read speech it calls many
mid-sentence pauses "complete" (0.96+ after "It was the best of times,"), which is why it
is one opinion among several and never the decision itself.

The ONNX weights (``smart-turn-v3.2-cpu.onnx``, 8.7 MB, BSD-2-Clause) are a data file of
the ``pipecat-ai`` wheel. That package is installed ``--no-deps`` and never imported: its
``__init__`` pulls in a framework we do not use; :func:`model_path` only locates the file.

Input: ``input_features`` = Whisper log-mel (80 x 800) of the last 8 s at 16 kHz,
left-padded with zeros and normalised (:mod:`pipeline.dsp.logmel`). Output: the
probability that the turn is complete. ~25 ms per call on one core, so inference runs on
its own model thread (:class:`pipeline.backends._local.ModelWorker`), never on the loop.
"""

from __future__ import annotations

import logging
import time
from functools import lru_cache
from pathlib import Path

import numpy as np

from pipeline.audio import RATE, resample
from pipeline.backends._local import ModelWorker, package_dir
from pipeline.dsp.logmel import SAMPLE_RATE, fit_window, log_mel

logger = logging.getLogger(__name__)

WINDOW_S = 8.0
MODEL_FILE = "audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"


def model_path() -> Path:
    """The ONNX file inside the installed ``pipecat-ai`` wheel (without importing pipecat)."""
    path = package_dir("pipecat", "pipecat-ai") / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall pipecat-ai (pip install --no-deps pipecat-ai)")
    return path


def features(audio16k: np.ndarray) -> np.ndarray:
    """(1, 80, 800) float32 model input for 16 kHz float audio (any length)."""
    window = fit_window(audio16k, WINDOW_S, SAMPLE_RATE)
    return log_mel(window, do_normalize=True)[None]


class SmartTurn:
    """One ONNX session on one thread; :meth:`complete_probability` is the async entry."""

    def __init__(self, path: Path | None = None, *, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        started = time.perf_counter()
        self._session = ort.InferenceSession(
            str(path or model_path()), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name
        self._worker = ModelWorker("smart-turn")
        logger.info("smart-turn loaded in %.2f s", time.perf_counter() - started)

    def predict(self, audio16k: np.ndarray) -> float:
        """Blocking: probability (0..1) that the utterance in ``audio16k`` is complete."""
        out = self._session.run(None, {self._input: features(audio16k)})[0]
        return float(np.asarray(out).reshape(-1)[0])

    async def complete_probability(self, audio16k: np.ndarray) -> float:
        """:meth:`predict` on the model thread."""
        return await self._worker.run(self.predict, audio16k)

    def predict_pcm(self, pcm: np.ndarray) -> float:
        """Blocking: :meth:`predict` on the pipeline's 48 kHz int16 (the last 8 s of it)."""
        tail = pcm[-int(WINDOW_S * RATE) :]
        return self.predict(resample(tail, RATE, SAMPLE_RATE).astype(np.float32) / 32768.0)

    async def judge(self, pcm: np.ndarray) -> float:
        """Probability that the utterance in ``pcm`` (48 kHz int16) is complete; resampling
        and inference both run on the model thread."""
        return await self._worker.run(self.predict_pcm, pcm)


@lru_cache(maxsize=1)
def shared_model() -> SmartTurn:
    """The process's one Smart Turn session (blocking load: call it off the event loop)."""
    return SmartTurn()
