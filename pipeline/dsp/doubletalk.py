"""Double talk without a converged canceller: is the user speaking over the agent's echo?

At the start of a call the echo canceller has not found the echo path yet, so the mic
still carries the agent's own voice almost untouched. Refusing all onset evidence then
(as ``meta.echo_uncertain`` used to) loses the user's first words and delays barge-in by
up to two seconds. This detector needs no adaptive filter, only a bound on the echo:

* whatever the path, the echo in a band can only be as loud as the far end was in that
  band somewhere in the window the echo may come from (0-520 ms back, narrowed to the
  estimated delay once the delay tracker has one), times the path's gain;
* the gain per band is learnt from far-end-only frames -- a high percentile of the ratio
  mic / far-end envelope while the far end is active and no double talk is flagged --
  starting from a conservative prior (the echo as loud as the far end). A quiet mic frame
  teaches "little echo" only while no echo has been heard at all (headphones) or when the
  far end was active over the whole delay window: otherwise it may be the echo of a pause
  between the agent's words;
* a frame is double talk when enough bands stand well above that bound: the user's voice
  has energy where and when the agent's had none.

The far end's envelope is a per-band *maximum* over the window, so the bound holds for any
delay inside it; the price is sensitivity while the agent is loud in the same bands, which
the learnt gain (echo paths lose 6-20 dB) wins back within a few hundred ms.

Pure and synchronous: one 480-sample near frame and the matching far-end frame in, one
bool out; ~30 us per frame (two small FFTs).
"""

from __future__ import annotations

import numpy as np

from pipeline.audio import FRAME_10MS, RATE
from pipeline.dsp.vad import NoiseFloor

N_FFT = 512
BAND_EDGES_HZ = np.geomspace(250.0, 6000.0, 17)
WINDOW_FRAMES = 60  # 600 ms of far end: the echo delay range plus the room's tail
TAIL_FRAMES = 15  # once the delay is known: the room rings on ~150 ms past it
PRIOR_GAIN_DB = 0.0  # before learning: the echo may be as loud as the far end
MARGIN_DB = 6.0  # a band must stand this far above the echo bound
MIN_BANDS = 7  # ... in at least this many bands (of 16)
LEARN_FRAMES = 15  # far-active frames before the learnt gain replaces the prior
HISTORY = 150  # far-active frames the gain is learnt over (the most recent ones)
PERCENTILE = 90.0
SPREAD = 0.3  # how much of a band's far-end energy a distorting loudspeaker may put next door
FAR_ACTIVE_DB = -50.0  # a far-end frame quieter than this carries no voice
SUSTAIN_FRAMES = 1  # consecutive frames above the bound before it counts: echo overshoots are brief
HANGOVER_FRAMES = 8  # a talker's syllables are ~100-200 ms apart: bridge the gaps between them
# after double talk, the user is likely still talking in the frames that are not flagged
# (quieter syllables): learning them as "echo" would raise the bound over the user's voice
LEARN_PAUSE_FRAMES = 50
ABOVE_FLOOR_DB = 10.0  # a mic frame this far above its noise floor holds something (echo or user)


def bands() -> list[slice]:
    """FFT bins of the 16 speech bands (250 Hz - 6 kHz, log-spaced)."""
    freqs = np.fft.rfftfreq(N_FFT, 1.0 / RATE)
    return [slice(int(np.searchsorted(freqs, lo)), int(np.searchsorted(freqs, hi)))
            for lo, hi in zip(BAND_EDGES_HZ[:-1], BAND_EDGES_HZ[1:], strict=True)]


class BandEnergy:
    """Energy per speech band of one 10 ms frame (float [-1, 1)): two FFT calls' worth."""

    def __init__(self) -> None:
        self.bands = bands()
        self._window = np.hanning(FRAME_10MS).astype(np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        spectrum = np.abs(np.fft.rfft(x * self._window, N_FFT)) ** 2
        return np.array([spectrum[b].sum() for b in self.bands]) + 1e-12


class DoubleTalkDetector:
    """Per-call state: the far end's recent band energies and the learnt echo gain."""

    def __init__(self) -> None:
        self._band_energy = BandEnergy()
        self._far = np.full((WINDOW_FRAMES, len(self._band_energy.bands)), 1e-12)
        self._far_level = np.full(WINDOW_FRAMES, -120.0)
        self._slot = 0
        self._ratios: list[np.ndarray] = []  # log ratios of far-active, non-double-talk frames
        self._floor = NoiseFloor()
        self._hold = 0
        self._no_learn = 0  # frames left before learning resumes after double talk
        self._above = 0  # consecutive frames above the bound
        self._far_run = 0  # frames since the far end became active (the reply began)
        self._echo_heard = False  # an audible mic frame over the far end, not double talk
        self.gain_db = np.full(len(self._band_energy.bands), PRIOR_GAIN_DB)

    def push_far(self, far: np.ndarray) -> None:
        """The far-end frame that plays at the same time as the next mic frame (float [-1, 1))."""
        self._slot = (self._slot + 1) % WINDOW_FRAMES
        self._far[self._slot] = self._band_energy(far)
        energy = float(np.dot(far, far)) / len(far)
        self._far_level[self._slot] = 10 * np.log10(energy + 1e-12)
        active = self._far_level.max() > FAR_ACTIVE_DB
        self._far_run = self._far_run + 1 if active else 0

    def _envelope(self, lag_frames: int | None) -> tuple[np.ndarray, bool]:
        """Per-band maximum of the far end over the frames whose echo may be in the mic now."""
        if lag_frames is None:
            rows = np.arange(WINDOW_FRAMES)
        else:
            first = max(0, lag_frames - 2)
            rows = (self._slot - np.arange(first, min(WINDOW_FRAMES, lag_frames + TAIL_FRAMES))) % WINDOW_FRAMES
        active = bool(self._far_level[rows].max() > FAR_ACTIVE_DB)
        envelope = self._far[rows].max(axis=0)
        # neighbouring bands too: a loudspeaker driven hard spreads energy (harmonics)
        spread = np.maximum(envelope, np.maximum(np.roll(envelope, 1), np.roll(envelope, -1)) * SPREAD)
        return spread, active

    def update(self, near: np.ndarray, lag_frames: int | None) -> bool:
        """Is the user talking in this mic frame (float [-1, 1)), over whatever echo there is?"""
        level = 10 * np.log10(float(np.dot(near, near)) / len(near) + 1e-12)
        audible = level > self._floor.update(level) + ABOVE_FLOOR_DB
        envelope, active = self._envelope(lag_frames)
        near_db = 10 * np.log10(self._band_energy(near))
        ratio_db = near_db - 10 * np.log10(envelope)
        above = audible and int(np.count_nonzero(ratio_db > self.gain_db + MARGIN_DB)) >= MIN_BANDS
        self._above = self._above + 1 if above else 0
        double_talk = self._above >= SUSTAIN_FRAMES
        # learn only once the echo of the reply's start can have arrived (the delay, or the
        # longest delay while unknown): earlier frames would teach "no echo" too soon. A
        # quiet mic then is evidence too: headphones, or a client cancelling its own echo.
        settled = self._far_run > (lag_frames if lag_frames is not None else WINDOW_FRAMES - 8) + 2
        self._echo_heard |= active and audible and not above
        if active and settled and not above and self._no_learn == 0 and self._tells_the_gain(audible):
            self._learn(ratio_db)
        self._no_learn = max(0, self._no_learn - 1)
        if double_talk:
            self._hold, self._no_learn = HANGOVER_FRAMES, LEARN_PAUSE_FRAMES
            return True
        self._hold = max(0, self._hold - 1)
        return self._hold > 0

    def _tells_the_gain(self, audible: bool) -> bool:
        """Does this far-active, echo-only mic frame say how loud the echo is? An audible one
        does. A quiet one does only when no echo has been heard yet in the call (headphones,
        a client cancelling its own echo) or the far end was active in every frame its echo
        may come from: otherwise it may be the echo of a pause between the agent's words --
        learnt as "no echo", the next word's echo stood 30 dB over the bound and paused the
        agent in a live call (tests/test_echo_leak.py)."""
        return audible or not self._echo_heard or bool(self._far_level.min() > FAR_ACTIVE_DB)

    def _learn(self, ratio_db: np.ndarray) -> None:
        self._ratios.append(ratio_db)
        if len(self._ratios) > HISTORY:
            del self._ratios[0]
        if len(self._ratios) >= LEARN_FRAMES:
            learnt = np.percentile(np.array(self._ratios), PERCENTILE, axis=0)
            # the learnt gain may lower the bound, never raise it above the prior
            self.gain_db = np.minimum(learnt, PRIOR_GAIN_DB)
