"""Automatic gain control: bring the user's speech to a steady level for STT and the VAD.

Users sit anywhere from 10 cm to 2 m from their microphone; Whisper and the VAD work best
on speech at a known level. The gain adapts towards ``target_dbfs`` for the *speech*
level only -- it is frozen on frames RNNoise does not call speech -- so it never creeps
up during pauses and then blasts the next word ("pumping"), nor lifts the noise floor.

* speech level: power average over speech frames (~0.5 s of speech);
* gain: slews towards target - level at most ``rise_db_per_s`` up and ``fall_db_per_s``
  down, within [min_gain_db, max_gain_db]; interpolated across each frame so gain steps
  never click;
* limiter: if a frame would peak above ``ceiling_dbfs``, the gain drops at once (from
  the start of that frame) and recovers at ``release_db_per_s``; a final clip guards the
  int16 range against interpolation overshoot.
"""

from __future__ import annotations

import numpy as np

from pipeline.audio import FRAME_10MS
from pipeline.dsp.base import INT16_SCALE, FrameMeta

FRAMES_PER_S = 100
_RAMP = (np.arange(FRAME_10MS, dtype=np.float32) + 1.0) / FRAME_10MS


class AgcStage:
    """Adaptive digital gain + peak limiter; reads ``speech_probability``, sets ``gain_db``."""

    name = "agc"

    def __init__(
        self,
        *,
        target_dbfs: float = -18.0,
        max_gain_db: float = 30.0,
        min_gain_db: float = -10.0,
        rise_db_per_s: float = 10.0,
        fall_db_per_s: float = 20.0,
        ceiling_dbfs: float = -1.0,
        release_db_per_s: float = 30.0,
        speech_threshold: float = 0.6,
        level_smoothing: float = 0.02,
    ) -> None:
        self.target_dbfs = target_dbfs
        self._max_gain = max_gain_db
        self._min_gain = min_gain_db
        self._rise = rise_db_per_s / FRAMES_PER_S
        self._fall = fall_db_per_s / FRAMES_PER_S
        self._release = release_db_per_s / FRAMES_PER_S
        self._ceiling = 10.0 ** (ceiling_dbfs / 20.0) * INT16_SCALE
        self._speech_threshold = speech_threshold
        self._alpha = level_smoothing
        self._speech_power: float | None = None  # mean square of speech frames, int16 scale
        self.gain_db = 0.0  # the adaptive gain
        self._applied_db = 0.0  # what was applied at the end of the last frame (limited)
        self._x = np.zeros(FRAME_10MS, np.float32)

    @property
    def speech_level_dbfs(self) -> float | None:
        """The tracked speech level, None before the first speech frame."""
        if self._speech_power is None:
            return None
        return 10.0 * np.log10(self._speech_power / INT16_SCALE**2 + 1e-20)

    def process(self, frame: np.ndarray, meta: FrameMeta) -> np.ndarray:
        x = self._x
        np.copyto(x, frame, casting="unsafe")
        if meta.speech_probability >= self._speech_threshold:
            self._adapt(float(np.dot(x, x)) / FRAME_10MS)
        peak = float(np.max(np.abs(x)))
        limit_db = 20.0 * np.log10(self._ceiling / peak) if peak > 0 else self._max_gain
        end_db = min(self.gain_db, self._applied_db + self._release, limit_db)
        start_db = min(self._applied_db, limit_db)  # instant attack: limit the whole frame
        meta.gain_db = end_db
        self._applied_db = end_db
        if start_db == 0.0 and end_db == 0.0:
            return frame
        g0, g1 = 10.0 ** (start_db / 20.0), 10.0 ** (end_db / 20.0)
        x *= g0 + (g1 - g0) * _RAMP
        np.clip(x, -32768.0, 32767.0, out=x)
        return np.rint(x).astype(np.int16)

    def _adapt(self, power: float) -> None:
        if power <= 0.0:
            return
        if self._speech_power is None:
            self._speech_power = power
        else:
            self._speech_power += self._alpha * (power - self._speech_power)
        level = self.speech_level_dbfs
        assert level is not None
        want = min(self._max_gain, max(self._min_gain, self.target_dbfs - level))
        step = want - self.gain_db
        self.gain_db += min(step, self._rise) if step > 0 else max(step, -self._fall)
