"""Signals shared by the DSP tests, synthesised once per session (espeak-ng and Piper)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from bench import signals as sim


@pytest.fixture(scope="session")
def user_speech() -> list[np.ndarray]:
    """The user's voice (espeak-ng), one clip per sentence, float32 48 kHz."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make setup installs it)")
    return [sim.espeak(text) for text in sim.USER_SENTENCES]


@pytest.fixture(scope="session")
def agent_speech() -> np.ndarray:
    """The agent's voice (the local Piper voice), all agent sentences back to back."""
    return np.concatenate([sim.piper(text) for text in sim.AGENT_SENTENCES])


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)
