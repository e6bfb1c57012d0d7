"""``parley call``: play a WAV into a call as the microphone and measure the agent's reply.

Latency is measured where the user perceives it: from the end of speech in the WAV (as
sent, on the client's clock) to the first voiced frame of the reply received back.
"""

from __future__ import annotations

import asyncio
import logging
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np

from media_server.client import CallClient, speech_end_offset
from pipeline.audio import RATE, resample

logger = logging.getLogger(__name__)

TAIL_S = 0.3  # after tts-end, what is still in flight through the jitter buffers


def read_wav(path: Path) -> np.ndarray:
    """A 16-bit PCM WAV as 48 kHz mono int16 (mixed down and resampled as needed)."""
    try:
        with wave.open(str(path), "rb") as w:
            if w.getsampwidth() != 2:
                raise ValueError(f"{path}: only 16-bit PCM WAV is supported")
            channels, rate = w.getnchannels(), w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    except (wave.Error, EOFError) as exc:
        raise ValueError(f"{path}: not a readable WAV file ({exc})") from exc
    if channels > 1:
        pcm = pcm.reshape(-1, channels).mean(axis=1).astype(np.int16)
    return resample(pcm, rate, RATE)


def write_wav(path: Path, pcm: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.astype("<i2").tobytes())


async def run_turn(client: CallClient, pcm: np.ndarray, timeout: float) -> dict[str, Any]:
    """One user turn: speak ``pcm``, wait for the agent to finish replying, measure."""
    t_start = time.monotonic()
    playback = client.say(pcm)
    await playback.done
    assert playback.started_at is not None
    t_speech_end = playback.started_at + speech_end_offset(pcm)
    try:
        await client.wait_event(
            lambda e: e["type"] in ("tts-end", "interrupted", "error"), timeout, since=t_start
        )
    except TimeoutError:
        logger.warning("no end of reply within %.0f s", timeout)
    await asyncio.sleep(TAIL_S)
    return summarize_turn(client, t_start, t_speech_end)


def summarize_turn(client: CallClient, t_start: float, t_speech_end: float) -> dict[str, Any]:
    voiced = client.voiced_between(t_speech_end)
    events = [e for t, e in client.events if t >= t_start]
    server = next((e.get("latency_ms", {}) for e in reversed(events) if e["type"] == "metrics"), {})
    reply_start = voiced[0].t if voiced else None
    return {
        "transcript": " ".join(e["text"] for e in events if e["type"] == "stt-final").strip(),
        "reply_text": " ".join(e["text"] for e in events if e["type"] == "llm-done").strip(),
        "reply_audio_s": round((voiced[-1].t - voiced[0].t + 0.01), 3) if voiced else 0.0,
        "latency_ms": {
            "turn": round((reply_start - t_speech_end) * 1000, 1) if reply_start else None,
            "stt": server.get("stt"),
            "llm_first_token": server.get("llm_first_token"),
            "tts_first_audio": server.get("tts_first_audio"),
        },
        "audio": client.audio_between(reply_start, voiced[-1].t + 0.01) if voiced else None,
        "server_ms": server,
    }


async def run_call(
    url: str, wav: Path, persona: str | None, turns: int = 1, out: Path | None = None,
    timeout: float = 60.0, detail: bool = False,
) -> dict[str, Any]:
    """The whole ``parley call``: returns the contract JSON object (DESIGN.md, CLI).

    ``detail`` adds ``server_ms``: every stage the server reported (benchmarks use it).
    """
    pcm = np.concatenate((read_wav(wav), np.zeros(RATE // 2, np.int16)))
    async with CallClient(url.rstrip("/"), persona) as client:
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
