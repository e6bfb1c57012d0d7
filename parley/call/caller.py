"""``parley call``: play a WAV into a call as the microphone and measure the agent's reply.

Latency is measured where the user perceives it: from the end of speech in the WAV (as
sent, on the client's clock) to the first voiced frame of the reply received back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from parley.call.client import CallClient, speech_end_offset
from pipeline.audio import RATE, read_wav, write_wav

logger = logging.getLogger(__name__)

TAIL_S = 0.3  # after tts-end, what is still in flight through the jitter buffers


async def run_turn(client: CallClient, pcm: np.ndarray, timeout: float) -> dict[str, Any]:
    """One user turn: speak all of ``pcm``, wait for the reply to the *whole* of it, measure.

    Pauses inside the WAV may make the server end the turn early (``end-of-turn``) and
    start a reply that the rest of the speech then interrupts or retracts; the turn is
    over only when the reply after the last end of turn has finished.
    """
    t_start = time.monotonic()
    playback = client.say(pcm)
    await playback.done
    assert playback.started_at is not None
    t_speech_end = playback.started_at + speech_end_offset(pcm)
    deadline = time.monotonic() + timeout
    try:
        await client.wait_event(lambda e: e["type"] == "end-of-turn", timeout, since=t_speech_end)
        t_last_end = max(t for t, e in client.events if e["type"] == "end-of-turn")
        await client.wait_event(_reply_over, max(0.1, deadline - time.monotonic()), since=t_last_end)
    except TimeoutError:
        logger.warning("no end of reply within %.0f s", timeout)
    await asyncio.sleep(TAIL_S)
    return summarize_turn(client, t_start, t_speech_end, playback.started_at)


def _reply_over(event: dict[str, Any]) -> bool:
    """The reply has finished: its audio ended, it failed, or there was nothing to say."""
    kind = event["type"]
    return kind in ("tts-end", "error") or (kind == "turn" and event.get("state") == "listening")


def final_transcripts(events: list[dict[str, Any]]) -> list[str]:
    """``stt-final`` texts of the turns that stood: a turn the user resumed (``turn-resumed``)
    is transcribed again with its continuation, so its first transcript is dropped."""
    finals: list[str] = []
    turn_final: str | None = None  # the transcript of the latest end of turn, if any yet
    for event in events:
        kind = event["type"]
        if kind == "end-of-turn":
            turn_final = None
        elif kind == "stt-final":
            turn_final = event["text"]
            finals.append(turn_final)
        elif kind == "turn-resumed" and turn_final is not None and finals and finals[-1] is turn_final:
            finals.pop()
            turn_final = None
    return finals


def summarize_turn(client: CallClient, t_start: float, t_speech_end: float,
                   t_wav: float | None = None) -> dict[str, Any]:
    voiced = client.voiced_between(t_speech_end)
    timed = [(t, e) for t, e in client.events if t >= t_start]
    events = [e for _, e in timed]
    server: dict[str, Any] = next(
        (e.get("latency_ms", {}) for e in reversed(events) if e["type"] == "metrics"), {}
    )
    reply_start = voiced[0].t if voiced else None
    zero = t_start if t_wav is None else t_wav
    ends = [t for t, e in timed if e["type"] == "end-of-turn"]
    last_end = ends[-1] if ends else t_start
    return {
        "transcript": " ".join(final_transcripts(events)).strip(),
        "reply_text": " ".join(e["text"] for t, e in timed if e["type"] == "llm-done" and t >= last_end).strip(),
        "turn_ends": [round(t - zero, 3) for t in ends],
        "interruptions": sum(e["type"] == "interrupted" for e in events),
        "premature_replies": sum(e["type"] == "tts-start" and t < t_speech_end for t, e in timed),
        "reply_audio_s": round((voiced[-1].t - voiced[0].t + 0.01), 3) if voiced else 0.0,
        "latency_ms": {
            "turn": round((reply_start - t_speech_end) * 1000, 1) if reply_start else None,
            "stt": server.get("stt"),
            "llm_first_token": server.get("llm_first_token"),
            "tts_first_audio": server.get("tts_first_audio"),
        },
        "audio": client.audio_between(voiced[0].t, voiced[-1].t + 0.01) if voiced else None,
        "server_ms": server,
    }


async def run_call(
    url: str, wav: Path, persona: str | None, turns: int = 1, out: Path | None = None,
    timeout: float = 60.0, detail: bool = False, record: bool = False,
) -> dict[str, Any]:
    """The whole ``parley call``: returns the JSON object documented in the README (``parley call``).

    ``detail`` adds ``server_ms``: every stage the server reported (benchmarks use it).
    ``record``: consent to the server recording the call (README, Recordings).
    """
    pcm = np.concatenate((read_wav(wav), np.zeros(RATE // 2, np.int16)))
    async with CallClient(url.rstrip("/"), persona, record=record) as client:
        results = []
        for _ in range(max(1, turns)):
            results.append(await run_turn(client, pcm, timeout))
        frames = {"received": client.frames_received, "late": client.frames_late}
    audio = [r.pop("audio") for r in results]
    if not detail:
        for r in results:
            r.pop("server_ms")
    if out is not None:
        voiced = [a for a in audio if a is not None]
        write_wav(out, np.concatenate(voiced) if voiced else np.zeros(0, np.int16))
    summary = dict(results[-1])
    summary["frames"] = frames
    if turns > 1:
        summary["turns"] = results
    return summary
