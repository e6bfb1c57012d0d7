"""The pass-through cue (``pipeline.dsp.passthrough``) on synthetic frames: what a converged
canceller did to a frame says whether the user's voice is in it."""

from __future__ import annotations

import numpy as np

from bench import signals as sim
from pipeline.audio import FRAME_10MS
from pipeline.dsp.passthrough import ERLE_FRAMES, PassThroughDetector


def frames(n: int, seed: int, dbfs: float = -26.0) -> list[np.ndarray]:
    x = sim.set_level(sim.pink_noise(n * FRAME_10MS, np.random.default_rng(seed)), dbfs)
    return [x[i * FRAME_10MS : (i + 1) * FRAME_10MS].astype(np.float32) for i in range(n)]


def converged(erle_db: float = 30.0) -> PassThroughDetector:
    """A detector that has seen a canceller remove ``erle_db`` of loud echo for a second."""
    detector = PassThroughDetector()
    for quiet in frames(50, 1, dbfs=-70.0):  # the noise floor
        detector.update(quiet, quiet)
    for echo in frames(ERLE_FRAMES, 2):
        assert not detector.update(echo, echo * 10 ** (-erle_db / 20))
    return detector


def test_the_users_voice_through_a_converged_canceller_is_flagged() -> None:
    detector = converged()
    user = frames(1, 3)[0]
    assert detector.update(user + frames(1, 4)[0], user)  # echo removed, the user kept


def test_nothing_is_flagged_before_the_canceller_removes_enough() -> None:
    detector = converged(erle_db=8.0)
    user = frames(1, 3)[0]
    assert not detector.update(user + frames(1, 4)[0], user)


def test_a_canceller_that_makes_the_frame_louder_is_not_the_user() -> None:
    """A filter that no longer fits (the echo path moved) adds its wrong estimate."""
    detector = converged()
    echo, wrong = frames(2, 5)
    assert not detector.update(echo, echo + 2.0 * wrong)


def test_the_flag_bridges_a_short_gap_then_ends() -> None:
    detector = converged()
    user = frames(1, 3)[0]
    assert detector.update(user, user)
    quiet = frames(20, 6, dbfs=-70.0)
    held = [detector.update(q, q) for q in quiet]
    assert held[0] and not held[-1]
