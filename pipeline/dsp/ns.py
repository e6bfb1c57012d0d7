"""Noise suppression with RNNoise, called straight into the C library the wheel ships.

RNNoise (a small GRU network over 22 bands) removes stationary and non-stationary noise
-- fans, traffic, keyboards -- without the musical-noise artefacts of spectral
subtraction, and gives a per-frame voice probability for free. It runs natively at
48 kHz on 480-sample frames, our frame, so no resampling is needed.

``pyrnnoise``'s Python API wraps every frame in an audiolab graph, pads, converts and
allocates (~520 us a frame); the C function itself needs ~30 us. So the library is loaded
with ctypes and called with one preallocated float buffer, processed in place.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import weakref
from pathlib import Path

import numpy as np

from pipeline.audio import FRAME_10MS
from pipeline.dsp.base import FrameMeta


@functools.cache
def _library() -> ctypes.CDLL:
    """Find ``librnnoise.so`` inside the installed wheel without importing its Python side
    (which pulls in audiolab and tqdm for nothing)."""
    spec = importlib.util.find_spec("pyrnnoise")
    if spec is None or spec.origin is None:
        raise RuntimeError("pyrnnoise is not installed")
    lib = ctypes.CDLL(str(Path(spec.origin).parent / "librnnoise.so"))
    lib.rnnoise_create.argtypes = [ctypes.c_void_p]
    lib.rnnoise_create.restype = ctypes.c_void_p
    lib.rnnoise_destroy.argtypes = [ctypes.c_void_p]
    lib.rnnoise_destroy.restype = None
    lib.rnnoise_process_frame.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.rnnoise_process_frame.restype = ctypes.c_float
    if lib.rnnoise_get_frame_size() != FRAME_10MS:
        raise RuntimeError("this librnnoise does not use 480-sample frames")
    return lib


class RnnoiseStage:
    """RNNoise denoiser; sets ``speech_probability``. 10 ms latency."""

    name = "ns"
    latency_samples = FRAME_10MS

    def __init__(self) -> None:
        lib = _library()
        self._process = lib.rnnoise_process_frame
        self._state = lib.rnnoise_create(None)
        if not self._state:
            raise MemoryError("rnnoise_create failed")
        weakref.finalize(self, lib.rnnoise_destroy, self._state)
        self._buf = np.zeros(FRAME_10MS, np.float32)  # int16 scale, processed in place
        self._addr = self._buf.ctypes.data

    def process(self, frame: np.ndarray, meta: FrameMeta) -> np.ndarray:
        buf = self._buf
        np.copyto(buf, frame, casting="unsafe")
        meta.speech_probability = self._process(self._state, self._addr, self._addr)
        np.clip(buf, -32768.0, 32767.0, out=buf)
        return np.rint(buf).astype(np.int16)
