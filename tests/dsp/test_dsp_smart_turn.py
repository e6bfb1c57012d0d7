"""Whisper log-mel features and the Smart Turn end-of-turn model, on real recorded speech."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.audio import RATE
from pipeline.dsp import logmel

pytest.importorskip("onnxruntime")
real_speech = pytest.importorskip("bench.real_speech")

#: Single-sentence prompts read by a real person (asterisk-core-sounds-en-wav).
STATEMENTS = ("tt-weasels", "vm-nobodyavail", "queue-youarenext", "privacy-unident", "vm-sorry",
              "conf-onlyperson")


def test_slaney_mel_scale_and_filters() -> None:
    assert logmel.hz_to_mel(np.array([1000.0]))[0] == pytest.approx(15.0)  # linear part ends at 1 kHz
    assert logmel.mel_to_hz(logmel.hz_to_mel(np.array([300.0, 4000.0]))) == pytest.approx([300.0, 4000.0])
    bank = logmel.mel_filterbank()
    assert bank.shape == (80, 201)
    peaks = bank.argmax(axis=1)
    assert np.all(np.diff(peaks) >= 0)  # filters climb the spectrum in order
    # Slaney norm: each triangle has area 1 (in Hz), so wide high filters are low
    width_hz = 16000 / 2 / 200
    areas = bank.sum(axis=1) * width_hz
    assert np.median(areas[40:]) == pytest.approx(1.0, rel=0.1)
    assert bank[:, peaks[-1]].max() < bank[:, peaks[5]].max()


def test_features_of_a_tone_and_of_silence() -> None:
    t = np.arange(8 * logmel.SAMPLE_RATE) / logmel.SAMPLE_RATE
    tone = (0.1 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    feats = logmel.log_mel(tone)
    assert feats.shape == (80, 800)  # 8 s -> exactly 800 frames (the last one dropped)
    band = int(feats[:, 400].argmax())
    centre_hz = logmel.mel_to_hz(np.linspace(0, logmel.hz_to_mel(np.array([8000.0]))[0], 82))[band + 1]
    assert 900 < centre_hz < 1150
    assert feats.max() - feats.min() <= 2.0 + 1e-6  # the floor is 8 log10 units under the peak, /4
    window = logmel.fit_window(np.ones(16000, np.float32), 8.0)
    assert window.shape == (128000,) and window[:112000].max() == 0.0 and window[-1] == 1.0


@pytest.fixture(scope="module")
def prompts() -> dict[str, object]:
    try:
        return {u.name: u for u in real_speech.real_utterances()}
    except real_speech.MissingSpeech as exc:
        pytest.skip(str(exc))


def test_smart_turn_hears_finished_sentences_and_cut_words(prompts, smart_turn) -> None:
    """Our features drive the model as it was trained: real finished statements score high,
    the same recordings cut off mid-sentence score low."""
    ends, cuts = [], []
    for name in STATEMENTS:
        u = prompts[name]
        ends.append(smart_turn.predict_pcm(u.pcm[: int((u.end_s + 0.2) * RATE)]))
        for frac in (0.35, 0.55, 0.75):
            t = u.start_s + frac * (u.end_s - u.start_s)
            cuts.append(smart_turn.predict_pcm(u.pcm[: int(t * RATE)]))
    assert min(ends) >= 0.8, ends
    assert np.median(cuts) <= 0.1, cuts


async def test_model_runs_off_the_event_loop(prompts, smart_turn) -> None:
    u = prompts["tt-weasels"]
    p = await smart_turn.judge(u.pcm[: int((u.end_s + 0.2) * RATE)])
    assert 0.0 <= p <= 1.0 and p == pytest.approx(smart_turn.predict_pcm(u.pcm[: int((u.end_s + 0.2) * RATE)]),
                                                   abs=1e-5)
