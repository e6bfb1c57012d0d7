"""Double talk once the echo canceller has converged: the echo is removed, the user passes.

A barge-in over the agent's voice is confirmed on frames the turn detector can trust; a
frame that may be residual echo counts a third (``TurnDetector.echo_evidence``), so a
barge-in would need ~450 ms of speech (~500 ms at the half it counted before). Once the
canceller has converged it removes the agent's voice by 10-40 dB in every speech band,
while the user's voice -- which no filter of the far end can predict -- goes through it
almost untouched. So a frame whose canceller output keeps most of its input in many
bands, and is well above the noise floor, carries the user: it can count in full.

The bound is absolute, not learnt: how much the canceller removes swings by 20 dB from
syllable to syllable (a loud syllable, a saturating loudspeaker), and a percentile learnt
in a good stretch flagged the next loud syllable of echo as the user (a self-interruption
in the offline barge-in set). A canceller whose filter no longer fits (the echo path
moved: a client's jitter buffer grew) lets the echo through too, but it also makes some
bands *louder* -- the user's voice cannot come out louder than it went in -- so such
frames are not the user (``ADDED``, ``ADDED_BAND_DB``). And a canceller that is trusted by the
echo stage's frame count but still removes little (its median over the last 100 loud
frames under ``MIN_ERLE_DB``) cannot tell the user from the echo this way: the detector
stays silent until it removes more. Empty bands (the lowest are narrower than an FFT bin)
do not vote.

Pure and synchronous: the mic frame before and after the canceller in, one bool out;
~30 us per frame (two small FFTs).
"""

from __future__ import annotations

import collections

import numpy as np

from pipeline.dsp.doubletalk import HANGOVER_FRAMES, BandEnergy
from pipeline.dsp.vad import NoiseFloor

KEPT_DB = 6.0  # a band the canceller took less than this from holds the user's voice ...
MIN_BANDS = 7  # ... when at least this many of the speech bands do
ADDED = 10 ** (1.0 / 10)  # output louder than input by more than 1 dB: the canceller is off, not the user
ADDED_BAND_DB = 3.0  # a band the canceller made this much louder: its filter is wrong ...
MAX_ADDED_BANDS = 1  # ... and more than this many such bands: the echo path moved, not the user
ABOVE_FLOOR_DB = 12.0  # the output must hold something: not the room's noise
MIN_ERLE_DB = 15.0  # the canceller must be removing this much of the echo (median) ...
ERLE_FRAMES = 100  # ... over this many recent frames of echo ...
MEASURE_DB = 30.0  # ... this far above the noise floor (so that 15 dB is measurable)


class PassThroughDetector:
    """Per-call state: the output's noise floor and the hangover between syllables."""

    def __init__(self) -> None:
        self._band_energy = BandEnergy()
        self._real = np.array([b.stop > b.start for b in self._band_energy.bands])  # some hold no bin
        self._floor = NoiseFloor()
        self._hold = 0
        self._erle_db: collections.deque[float] = collections.deque(maxlen=ERLE_FRAMES)

    def update(self, before: np.ndarray, after: np.ndarray) -> bool:
        """Is the user talking in this frame? ``before``/``after``: the mic frame into and
        out of a converged canceller (float [-1, 1)) while the agent's voice may be in it."""
        level_in = float(np.dot(before, before))
        level_out = float(np.dot(after, after))
        floor = self._floor.update(_db(level_out / len(after)))
        if _db(level_out / len(after)) > floor + ABOVE_FLOOR_DB and level_out <= level_in * ADDED \
                and self._converged():
            kept_db = 10 * np.log10(self._band_energy(after) / self._band_energy(before))[self._real]
            kept = int(np.count_nonzero(kept_db > -KEPT_DB))
            if kept >= MIN_BANDS and int(np.count_nonzero(kept_db > ADDED_BAND_DB)) <= MAX_ADDED_BANDS:
                self._hold = HANGOVER_FRAMES
                return True
        if _db(level_in / len(before)) > floor + MEASURE_DB and self._hold == 0:
            self._erle_db.append(_db(level_in) - _db(level_out))  # echo loud enough to measure
        self._hold = max(0, self._hold - 1)
        return self._hold > 0

    def _converged(self) -> bool:
        return len(self._erle_db) == ERLE_FRAMES and float(np.median(self._erle_db)) >= MIN_ERLE_DB


def _db(energy: float) -> float:
    return 10 * np.log10(energy + 1e-12)
