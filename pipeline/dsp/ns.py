"""Noise suppression with RNNoise, called straight into the C library the wheel ships.

RNNoise (a small GRU network over 22 bands) removes stationary and non-stationary noise
-- fans, traffic, keyboards -- without the musical-noise artefacts of spectral
subtraction, and gives a per-frame voice probability for free. It runs natively at
48 kHz on 480-sample frames, our frame, so no resampling is needed.

``pyrnnoise``'s Python API wraps every frame in an audiolab graph, pads, converts and
allocates (~520 us a frame); the library is instead loaded with ctypes and called with one
preallocated float buffer, processed in place. The wheel's library runs its network on
float weights with SSE (0.2-1.7 ms a frame, by the machine's memory bandwidth);
``rnnoise_avx2.c`` (built by ``make``) takes over its linear layers with the int8 weights
the same library carries, read with AVX2 (4.6-5.8x faster on the 2-core test machine;
output ~30 dB from the float path's, as upstream RNNoise's own AVX2 build).
That works by ELF symbol interposition, so it is loaded first and only over the one
library build it was checked against (``_WHEEL_MODEL``); otherwise the float path runs.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import logging
import weakref
from pathlib import Path

import numpy as np

from pipeline.audio import FRAME_10MS
from pipeline.dsp.base import FrameMeta

log = logging.getLogger(__name__)

KERNEL_LIB = Path(__file__).with_name("_rnnoise_avx2.so")
KERNELS = {"float": 0, "int8": 1, "check": 2}  # modes of rnnoise_avx2.c
# pyrnnoise 0.4.5's librnnoise.so: RNNoise 0.2 generic build, big model (14 748 164 bytes
# of weight arrays). The interposed kernel relies on that build's LinearLayer layout.
_WHEEL_MODEL = (50, 14_748_164)
_active = "float"  # set by _set_mode


class _WeightArray(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("type", ctypes.c_int), ("size", ctypes.c_int), ("data", ctypes.c_void_p)]


@functools.cache
def _model_fingerprint(lib: ctypes.CDLL) -> tuple[int, int]:
    """(number of weight arrays, their total bytes) of the library's built-in model."""
    arrays = ctypes.cast(ctypes.addressof(ctypes.c_char.in_dll(lib, "rnnoise_arrays")), ctypes.POINTER(_WeightArray))
    count = total = 0
    while arrays[count].name:
        total += arrays[count].size
        count += 1
    return count, total


@functools.cache
def _kernel() -> ctypes.CDLL | None:
    """Load the AVX2 kernel into the global symbol scope -- before librnnoise.so."""
    if not KERNEL_LIB.exists():
        return None
    kernel = ctypes.CDLL(str(KERNEL_LIB), mode=ctypes.RTLD_GLOBAL)
    kernel.parley_rnnoise_setup.argtypes = [ctypes.c_void_p, ctypes.c_int]
    kernel.parley_rnnoise_setup.restype = ctypes.c_int
    kernel.parley_rnnoise_int8_calls.restype = ctypes.c_ulonglong
    kernel.parley_rnnoise_worst_error.restype = ctypes.c_float
    return kernel


@functools.cache
def _library() -> ctypes.CDLL:
    """Find ``librnnoise.so`` inside the installed wheel without importing its Python side
    (which pulls in audiolab and tqdm for nothing)."""
    spec = importlib.util.find_spec("pyrnnoise")
    if spec is None or spec.origin is None:
        raise RuntimeError("pyrnnoise is not installed")
    kernel = _kernel()
    lib = ctypes.CDLL(str(Path(spec.origin).parent / "librnnoise.so"))
    lib.rnnoise_create.argtypes = [ctypes.c_void_p]
    lib.rnnoise_create.restype = ctypes.c_void_p
    lib.rnnoise_destroy.argtypes = [ctypes.c_void_p]
    lib.rnnoise_destroy.restype = None
    lib.rnnoise_process_frame.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.rnnoise_process_frame.restype = ctypes.c_float
    if lib.rnnoise_get_frame_size() != FRAME_10MS:
        raise RuntimeError("this librnnoise does not use 480-sample frames")
    why = _why_float(lib, kernel)
    if why is not None:
        log.warning("RNNoise runs on its slow float path: %s", why)
    _set_mode(lib, kernel, "float" if why else "int8")
    return lib


def _why_float(lib: ctypes.CDLL, kernel: ctypes.CDLL | None) -> str | None:
    """Why the int8 kernel cannot run here, or None when it can."""
    if kernel is None:
        return f"{KERNEL_LIB.name} is not built (run `make`)"
    fingerprint = _model_fingerprint(lib)
    if fingerprint != _WHEEL_MODEL:
        return f"unknown librnnoise build {fingerprint} (the kernel was checked on pyrnnoise 0.4.5)"
    if not kernel.parley_rnnoise_cpu_ok():
        return "this CPU has no AVX2/FMA"
    return None


def _set_mode(lib: ctypes.CDLL, kernel: ctypes.CDLL | None, name: str) -> None:
    """Give the kernel the library's own linear layer (for the layers it leaves alone)."""
    global _active
    if kernel is not None:
        own_linear = ctypes.cast(lib.rnn_compute_linear_c, ctypes.c_void_p).value
        kernel.parley_rnnoise_setup(own_linear, KERNELS[name])
    _active = name


def active_kernel() -> str:
    """The kernel every RNNoise state in this process runs on now (a ``KERNELS`` key)."""
    _library()
    return _active


def use_kernel(name: str) -> bool:
    """Switch every RNNoise state in the process to ``name`` (see ``KERNELS``); ``int8``
    is the default. False when that kernel cannot run here (the float path then does)."""
    lib, kernel = _library(), _kernel()
    if name != "float" and _why_float(lib, kernel) is not None:
        return False
    _set_mode(lib, kernel, name)
    return True


def kernel_status() -> str:
    """One line for ``parley doctor``: which path RNNoise takes in this process."""
    why = _why_float(_library(), _kernel())
    return "int8 AVX2 kernel available" if why is None else f"float path: {why}"


def kernel_stats() -> tuple[int, float]:
    """(int8 layer calls so far, worst relative error against float seen in ``check`` mode)."""
    kernel = _kernel()
    if kernel is None:
        return 0, 0.0
    return kernel.parley_rnnoise_int8_calls(), kernel.parley_rnnoise_worst_error()


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
