"""Turn taking in a real call (aiortc peers over loopback, the local models), with real
people's recorded voices (``bench.real_speech``): a pause at a comma does not split the
turn, and words said while the agent starts talking are not lost."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from parley.call.caller import final_transcripts, run_turn
from parley.call.client import CallClient
from pipeline.audio import RATE
from tests.conftest import real_utterance

real_speech = pytest.importorskip("bench.real_speech")
pytestmark = pytest.mark.models


def words(text: str) -> set[str]:
    return set(real_speech.normalize_words(text))


def voice(name: str) -> np.ndarray:
    u = real_utterance(name)
    return u.pcm[int((u.start_s - 0.1) * RATE) : int((u.end_s + 0.1) * RATE)]


async def test_a_pause_at_a_comma_gets_one_reply_to_the_whole_sentence(url: str) -> None:
    """600 ms of silence after "yourself," (Whisper writes "yourself." there): one turn,
    one transcript of the whole sentence, one reply -- none started inside the pause."""
    try:
        utterance = real_speech.comma_pause(600)
    except real_speech.MissingSpeech as exc:
        pytest.skip(str(exc))
    async with CallClient(url, "socrates") as client:
        since = time.monotonic()
        result = await run_turn(client, utterance.pcm, timeout=120)
        timed = [(round(t - since, 2), e) for t, e in client.events if t >= since]
        events = [e for _, e in timed]
    kinds = [e["type"] for e in events]
    timeline = [(t, e["type"], e.get("text", e.get("state", ""))) for t, e in timed
                if e["type"] not in ("stt-interim", "llm-token")]
    assert result["premature_replies"] == 0, (utterance.pauses, timeline)
    assert kinds.count("tts-start") == 1 and kinds.count("llm-done") == 1, kinds
    # words from both sides of the pause in one transcript (tiny.en sometimes mishears the last one)
    assert {"yourself", "lock"} <= words(result["transcript"]), (result["transcript"], timeline)
    assert len(final_transcripts(events)) == 1, events  # a withdrawn turn's transcript does not stand
    assert result["reply_text"]


async def test_words_said_in_the_agents_first_second_reach_the_transcript(url: str) -> None:
    """The user speaks 0.4 s after the call's first reply starts to play: before the echo
    canceller could know the echo path. Every word must reach a transcript."""
    question, interjection = voice("vm-sorry"), voice("tt-weasels")
    async with CallClient(url, "socrates") as client:
        since = time.monotonic()
        client.say(question)
        await client.wait_event(lambda e: e["type"] == "tts-start", timeout=90, since=since)
        # tts-start leaves with the first chunk; its first frame plays ~0.1 s later
        await asyncio.sleep(0.5)
        t_said = time.monotonic()
        playback = client.say(interjection)
        await playback.done
        final = await client.wait_event(
            lambda e: e["type"] == "stt-final" and "weasels" in words(e["text"]), timeout=60, since=t_said
        )
        kinds = [e["type"] for t, e in client.events if t >= t_said]
    assert {"weasels", "eaten", "phone", "system"} <= words(final["text"]), final["text"]
    assert "interrupted" in kinds or "turn-resumed" in kinds, kinds
