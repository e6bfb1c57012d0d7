"""Voice activity: a fast permissive opinion before noise suppression, a careful one after.

* :class:`WebRtcVad` runs right after echo cancellation, on audio that still holds the
  room's noise: WebRTC's GMM VAD behind a -55 dBFS level gate. It fires within a frame on
  any voiced onset -- and on coughs and thumps. That is ``meta.maybe_speech``: the turn
  detector pauses the agent on it (when it also stands out of the noise floor), where a
  false alarm costs only a short pause. It also measures ``level_db`` and tracks
  ``noise_level_db`` (how noisy the user's side is), since this is where the noise is
  still there to measure.
* :class:`SpeechGate` runs after RNNoise, whose speech probability is much harder to fool
  with noise. ``meta.is_speech`` needs both opinions (or a very confident RNNoise alone)
  and is held for ``hangover_ms`` to bridge the gaps between words: it decides barge-in
  confirmation and end of turn, where a false alarm is expensive.

webrtcvad takes 10 ms frames at 48 kHz natively.
"""

from __future__ import annotations

import numpy as np
import webrtcvad

from pipeline.audio import RATE
from pipeline.dsp.base import FRAME_MS, INT16_SCALE, FrameMeta

SILENCE_DB = -120.0
DIGITAL_SILENCE_DB = -100.0  # below this a frame is padding, not a room: no noise information


class NoiseFloor:
    """Minimum statistics of the frame level: the lowest smoothed level of the last ~3 s.

    Speech cannot lift it (its pauses keep the minimum down), and it follows a noisier
    room within one window. A light smoothing first keeps single quiet frames from
    dragging it down.
    """

    def __init__(self, *, window_frames: int = 75, windows: int = 4) -> None:
        self._window_frames = window_frames
        self._minima = [float("inf")] * windows  # minima of the last full windows
        self._slot = 0
        self._left = window_frames
        self._window_min = float("inf")
        self._smoothed: float | None = None
        self.db = SILENCE_DB

    def update(self, level_db: float) -> float:
        if level_db < DIGITAL_SILENCE_DB:
            return self.db
        s = level_db if self._smoothed is None else 0.7 * self._smoothed + 0.3 * level_db
        self._smoothed = s
        self._window_min = min(self._window_min, s)
        self._left -= 1
        if self._left == 0:
            self._minima[self._slot] = self._window_min
            self._slot = (self._slot + 1) % len(self._minima)
            self._window_min, self._left = float("inf"), self._window_frames
        self.db = min(self._window_min, *self._minima)
        return self.db


class WebRtcVad:
    """Sets ``level_db``, ``noise_level_db`` and ``maybe_speech``; the frame passes unchanged."""

    name = "vad"

    def __init__(self, *, aggressiveness: int = 2, floor_db: float = -55.0) -> None:
        self._vad = webrtcvad.Vad(aggressiveness)
        self._floor_db = floor_db
        self.noise = NoiseFloor()

    def process(self, frame: np.ndarray, meta: FrameMeta) -> np.ndarray:
        x = frame.astype(np.float32)
        energy = float(np.dot(x, x)) / (len(x) * INT16_SCALE * INT16_SCALE)
        level = 10.0 * np.log10(energy) if energy > 1e-12 else SILENCE_DB
        meta.level_db = level
        meta.noise_level_db = self.noise.update(level)
        meta.maybe_speech = level > self._floor_db and self._vad.is_speech(frame.tobytes(), RATE)
        return frame


class SpeechGate:
    """Sets ``is_speech`` from ``maybe_speech`` and RNNoise's ``speech_probability``."""

    name = "speech"

    def __init__(
        self,
        *,
        hangover_ms: int = 60,
        probability_with_vad: float = 0.5,
        probability_alone: float = 0.9,
        floor_db: float = -55.0,
    ) -> None:
        self._hangover = hangover_ms // FRAME_MS
        self._p_with_vad = probability_with_vad
        self._p_alone = probability_alone
        self._floor_db = floor_db
        self._hold = 0

    def process(self, frame: np.ndarray, meta: FrameMeta) -> np.ndarray:
        p = meta.speech_probability
        audible = meta.level_db > self._floor_db
        voiced = (meta.maybe_speech and p >= self._p_with_vad) or (audible and p >= self._p_alone)
        if voiced:
            self._hold = self._hangover
        elif self._hold > 0:
            self._hold -= 1
            voiced = True
        meta.is_speech = voiced
        return frame
