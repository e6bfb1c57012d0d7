"""Turn taking on real people: premature cuts, lost words, WER through the turn detector,
latency after the true end -- ``parley bench turns``.

Each labelled utterance (:mod:`bench.real_speech`) runs frame by frame through the real
DSP chain and turn detector, with the real end-of-turn cues started when the agent starts
them -- Whisper's interim transcripts while the user talks and its decode of the utterance
so far after 60 ms of silence, queued on one Whisper thread as in the agent; the Smart
Turn model at each PAUSE -- and their verdicts reach the detector only after the time
they really took (so a slow cue is as late here as in a call). Every END_OF_TURN is a
decision the server would have acted on.

Two sets, reported apart (synthetic speech never enters the real-speech figures):
``real`` (:mod:`bench.real_speech`, recordings of people) and ``piper``
(:mod:`bench.piper_speech`, the Piper voice with inserted pauses and hesitations).
``parley bench turns --parts piper`` runs one set and keeps the other's rows from the
previous ``turns.json``; the JSON's ``measured`` says when each set was run.

Figures, per part (``tuning`` / ``held_out`` of the real set, ``piper_tuning`` /
``piper_held_out``) and turn model (``smart-turn`` / ``silence``):

* ``premature_cuts``: turn ends inside an intra-utterance pause, per pause;
* ``latency_ms``: true end of speech -> the end-of-turn decision (p50 / p95); the reply
  was prepared speculatively during that wait, so first audio follows within a frame
  when the pipeline is faster than the wait;
* ``wer_call`` vs ``wer_offline``: Whisper on what the call hands it -- the turn audio,
  with a premature end merged into the resumed turn as the agent does, with the agent's
  encoder window (``PARLEY_STT_WINDOW_S``) -- against Whisper with its own 30 s window on
  the whole recording; ``lost_words``: words of the offline transcript missing from
  the call's. ``wer_split``: the same when premature ends are *not* merged (each part
  transcribed on its own, the old behaviour).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.piper_speech import piper_utterances
from bench.real_speech import Utterance, normalize_words, real_utterances, word_errors
from parley.config import Settings
from pipeline.agent.voice import INTERIM_EVERY_S, SPECULATE_AFTER_FRAMES, next_interim_after
from pipeline.audio import FRAME_10MS, RATE, resample
from pipeline.dsp.chain import DspChain
from pipeline.dsp.endpoint import from_settings
from pipeline.dsp.turn import TurnDetector, TurnEventKind

MODES = ("smart-turn", "silence")
#: The sets, by ``--parts`` name: each builds its labelled utterances.
SETS: dict[str, Callable[[], list[Utterance]]] = {"real": real_utterances, "piper": piper_utterances}
SET_TITLES = {"real": "real recorded speech", "piper": "Piper, inserted pauses and hesitations"}


def set_of(row: dict[str, Any]) -> str:
    """Which set a result row belongs to."""
    return "piper" if row["source"] == "piper" else "real"


def part_of(row: dict[str, Any]) -> str:
    """Summary key of a row: the real set keeps its plain ``tuning`` / ``held_out`` keys."""
    part = "held_out" if row["held_out"] else "tuning"
    return part if set_of(row) == "real" else f"{set_of(row)}_{part}"


@dataclass
class TurnEnd:
    t: float  # input-audio time of the decision (s)
    audio: np.ndarray


@dataclass
class Simulated:
    """What the turn detector did on one utterance."""

    utterance: Utterance
    ends: list[TurnEnd] = field(default_factory=list)
    stt_ms: list[float] = field(default_factory=list)  # time each speculative Whisper decode took

    def premature(self) -> list[tuple[float, float]]:
        """The intra-utterance pauses in which the turn was ended."""
        return [
            (s, d) for s, d in self.utterance.pauses
            if any(s <= e.t <= s + d + 0.05 for e in self.ends)
        ]

    def latency_ms(self) -> float | None:
        after = [e.t for e in self.ends if e.t >= self.utterance.end_s]
        return (after[0] - self.utterance.end_s) * 1000 if after else None


@dataclass
class Cue:
    """A cue on its way to the detector: delivered at frame ``due``."""

    due: int
    kind: str  # "p" model verdict, "s" speculative transcript, "i" interim transcript
    value: Any
    at: tuple[int, int] | None = None  # interims: the detector's position when decoded


class Listener:
    """The agent's cues around one turn detector, on the agent's clock: one Whisper thread
    that runs interims (every ``INTERIM_EVERY_S`` while the user talks, at most
    ``INTERIM_DUTY`` of the thread) and the speculative decode (after
    ``SPECULATE_AFTER_FRAMES`` of silence, thrown away at the next voiced frame) in turn,
    and Smart Turn on its own thread at each PAUSE. Each decode really runs; its result
    reaches the detector after the time it took, queued behind the one before."""

    def __init__(self, turns: TurnDetector, stt: Any, smart: Any | None, result: Simulated) -> None:
        self.turns, self.stt, self.smart, self.result = turns, stt, smart, result
        self.cues: list[Cue] = []
        self.stt_free = 0  # frame at which the Whisper thread is free again
        self.silent = 0
        self.last_interim = -1e9
        self.interim_every = INTERIM_EVERY_S
        self.interim_done = 0  # frame at which the last interim lands

    def deliver(self, n: int) -> None:
        for cue in [c for c in self.cues if c.due <= n]:
            self.cues.remove(cue)
            if cue.kind == "p":
                self.turns.hint_probability(cue.value)
            elif self.turns.in_speech:
                self.turns.hint_transcript(cue.value, cue.at)

    async def on_frame(self, n: int, speaking: bool) -> None:
        if not self.turns.in_speech:
            self.silent = 0
            return
        self.silent = 0 if speaking else self.silent + 1
        if speaking:
            self.cues = [c for c in self.cues if c.kind != "s"]
            if n * 0.01 - self.last_interim >= self.interim_every and self.interim_done <= n:
                await self._interim(n)
        elif self.silent == SPECULATE_AFTER_FRAMES:
            text, lands = await self._decode(n, final=True)
            self.cues.append(Cue(lands, "s", text))

    def on_end(self) -> None:
        """End of turn: the speculative transcript becomes the turn's, no longer a cue."""
        self.cues = [c for c in self.cues if c.kind != "s"]

    async def on_pause(self, n: int, audio: np.ndarray) -> None:
        if self.smart is None:
            return
        started = time.perf_counter()
        p = await self.smart.complete_probability(resample(audio, RATE, 16000).astype(np.float32) / 32768.0)
        self.cues.append(Cue(n + int((time.perf_counter() - started) * 100) + 1, "p", p))

    async def _interim(self, n: int) -> None:
        self.last_interim = n * 0.01
        at, audio = self.turns.position(), self.turns.utterance()
        if audio.size < 4800:
            return
        text, lands = await self._decode(n, final=False, audio=audio)
        self.interim_done = lands
        self.interim_every = next_interim_after(INTERIM_EVERY_S, (lands - n) * 0.01)
        if text:
            self.cues.append(Cue(lands, "i", text, at))

    async def _decode(self, n: int, *, final: bool, audio: np.ndarray | None = None) -> tuple[str, int]:
        """(text, frame it lands at): it starts when the Whisper thread is free."""
        started = time.perf_counter()
        text: str = await self.stt.transcribe(self.turns.utterance() if audio is None else audio, final=final)
        took_s = time.perf_counter() - started
        if final:
            self.result.stt_ms.append(took_s * 1000)
        self.stt_free = max(n, self.stt_free) + int(took_s * 100) + 1
        return text, self.stt_free


async def simulate(utt: Utterance, settings: Settings, stt: Any, smart: Any | None) -> Simulated:
    """Run ``utt`` through the DSP chain and the turn detector with the live cues
    (:class:`Listener`)."""
    chain = DspChain(settings)
    turns = TurnDetector(endpoint=from_settings(settings), confirm_ms=settings.barge_in_min_ms)
    lag = chain.latency_ms / 1000
    result = Simulated(utt)
    listener = Listener(turns, stt, smart if settings.turn_model == "smart-turn" else None, result)
    for n, i in enumerate(range(0, len(utt.pcm) - FRAME_10MS + 1, FRAME_10MS)):
        listener.deliver(n)
        out, meta = chain.process(utt.pcm[i : i + FRAME_10MS], n * 0.01)
        event = turns.push(out, meta)
        await listener.on_frame(n, meta.is_speech)
        if event is None or event.audio is None:
            continue
        if event.kind is TurnEventKind.END_OF_TURN:
            result.ends.append(TurnEnd(n * 0.01 + 0.01 - lag, event.audio))
            listener.on_end()
        elif event.kind is TurnEventKind.PAUSE:
            await listener.on_pause(n, event.audio)
    return result


def _merged_turns(sim: Simulated) -> list[np.ndarray]:
    """Turn audio as the agent keeps it: a premature end merges into the resumed turn (the
    agent merges when the user resumes within ``PARLEY_TURN_GRACE_MS`` of the reply's start,
    1.5 s; every pause in the sets is shorter)."""
    turns: list[np.ndarray] = []
    carry: list[np.ndarray] = []
    for end in sim.ends:
        carry.append(end.audio)
        premature = end.t < sim.utterance.end_s - 0.05
        if not premature:
            turns.append(np.concatenate(carry))
            carry = []
    if carry:
        turns.append(np.concatenate(carry))
    return turns


def _deletions(reference: list[str], hypothesis: list[str]) -> int:
    """Words of ``reference`` with no counterpart in ``hypothesis`` (alignment deletions)."""
    n, m = len(reference), len(hypothesis)
    cost = np.zeros((n + 1, m + 1), np.int32)
    cost[:, 0], cost[0, :] = np.arange(n + 1), np.arange(m + 1)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            sub = cost[i - 1, j - 1] + (reference[i - 1] != hypothesis[j - 1])
            cost[i, j] = min(sub, cost[i - 1, j] + 1, cost[i, j - 1] + 1)
    i, j, deleted = n, m, 0
    while i > 0:
        if j > 0 and cost[i, j] == cost[i - 1, j - 1] + (reference[i - 1] != hypothesis[j - 1]):
            i, j = i - 1, j - 1
        elif cost[i, j] == cost[i - 1, j] + 1:
            i, deleted = i - 1, deleted + 1
        else:
            j -= 1
    return deleted


async def score(sim: Simulated, stt: Any, offline_stt: Any) -> dict[str, Any]:
    """Transcripts through the call (merged and split) against offline -- the same model
    with Whisper's own 30 s window (``offline_stt``) on the whole recording."""
    utt = sim.utterance
    offline = await offline_stt.transcribe(utt.pcm, final=True)
    merged = [await stt.transcribe(a, final=True) for a in _merged_turns(sim)]
    split = [await stt.transcribe(e.audio, final=True) for e in sim.ends]
    call_text, split_text = " ".join(t for t in merged if t), " ".join(t for t in split if t)
    return {
        "name": utt.name, "source": utt.source, "held_out": utt.held_out,
        "pauses": len(utt.pauses), "premature": len(sim.premature()),
        "turn_ends": len(sim.ends), "latency_ms": sim.latency_ms(),
        "reference": utt.text, "offline": offline, "call": call_text, "split": split_text,
        "errors_offline": word_errors(utt.text, offline)[0],
        "errors_call": word_errors(utt.text, call_text)[0],
        "errors_split": word_errors(utt.text, split_text)[0],
        "words": len(normalize_words(utt.text)),
        "lost_words": _deletions(normalize_words(offline), normalize_words(call_text)),
        "stt_ms": [round(c, 1) for c in sim.stt_ms],
    }


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(float(np.percentile(values, q)), 1)


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    pauses = sum(r["pauses"] for r in rows)
    latencies = [r["latency_ms"] for r in rows if r["latency_ms"] is not None]
    words = sum(r["words"] for r in rows) or 1
    decodes = [c for r in rows for c in r["stt_ms"]]
    return {
        "utterances": len(rows),
        "pauses": pauses,
        "premature_cuts": sum(r["premature"] for r in rows),
        "premature_per_pause": round(sum(r["premature"] for r in rows) / max(1, pauses), 3),
        "missed_ends": sum(r["latency_ms"] is None for r in rows),
        "latency_p50_ms": _pct(latencies, 50),
        "latency_p95_ms": _pct(latencies, 95),
        "wer_offline": round(sum(r["errors_offline"] for r in rows) / words, 3),
        "wer_call": round(sum(r["errors_call"] for r in rows) / words, 3),
        "wer_split": round(sum(r["errors_split"] for r in rows) / words, 3),
        "lost_words": sum(r["lost_words"] for r in rows),
        "stt_ms_p50": _pct(decodes, 50),
    }


async def evaluate(utterances: list[Utterance], mode: str, stt: Any, offline_stt: Any, smart: Any | None,
                   base: Settings) -> list[dict[str, Any]]:
    settings = replace(base, turn_model=mode)
    rows = []
    for n, utt in enumerate(utterances, 1):
        sim = await simulate(utt, settings, stt, smart)
        rows.append(await score(sim, stt, offline_stt))
        print(f"turns: {mode} {n}/{len(utterances)} {utt.name}: {rows[-1]['premature']} premature, "
              f"latency {rows[-1]['latency_ms']} ms", file=sys.stderr, flush=True)
    return rows


def summaries(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary per part that has rows, real parts first."""
    parts: dict[str, list[dict[str, Any]]] = {}
    for row in sorted(rows, key=lambda r: (set_of(r) != "real", r["held_out"])):
        parts.setdefault(part_of(row), []).append(row)
    return {part: summarize(part_rows) for part, part_rows in parts.items()}


async def _run(quick: bool, parts: Iterable[str]) -> dict[str, Any]:
    from pipeline.backends.local_stt import WhisperSTT
    from pipeline.dsp.smart_turn import SmartTurn

    base = Settings.from_env(aec="numpy")  # PARLEY_TURN_* / PARLEY_STT_WINDOW_S try other rules
    stt, smart = WhisperSTT(base), SmartTurn()
    offline_stt = WhisperSTT(replace(base, stt_window_s=30))
    utterances = [u for part in parts for u in SETS[part]()]
    if quick:
        utterances = utterances[::3]
    result: dict[str, Any] = {"rows": {}}
    for mode in MODES:
        result["rows"][mode] = await evaluate(utterances, mode, stt, offline_stt, smart, base)
    knobs = ("stt_window_s", "turn_complete_ms", "turn_likely_ms", "turn_default_ms", "turn_incomplete_ms",
             "turn_threshold", "turn_reprobe_ms", "eot_silence_ms")
    result["settings"] = {k: getattr(base, k) for k in knobs}
    return result


def parse_parts(parts: str | None) -> tuple[str, ...]:
    """``"real,piper"`` -> the set names, checked; ``None`` is every set."""
    if parts is None:
        return tuple(SETS)
    names = tuple(p.strip() for p in parts.split(",") if p.strip())
    unknown = [p for p in names if p not in SETS]
    if unknown or not names:
        raise ValueError(f"--parts {parts!r}: choose from {', '.join(SETS)}")
    return names


def merge(previous: dict[str, Any] | None, fresh: dict[str, Any], parts: tuple[str, ...]) -> dict[str, Any]:
    """``fresh`` rows for ``parts``, the previous run's rows for the other sets; summaries
    recomputed, and when each set was measured recorded."""
    previous = previous or {}
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    measured = {**previous.get("measured", {}), **{p: now for p in parts}}
    rows = {
        mode: [r for r in previous.get("rows", {}).get(mode, []) if set_of(r) not in parts] + fresh["rows"][mode]
        for mode in fresh["rows"]
    }
    kept = {set_of(r) for mode_rows in rows.values() for r in mode_rows}
    return {
        "rows": rows,
        "summary": {mode: summaries(mode_rows) for mode, mode_rows in rows.items()},
        "settings": fresh["settings"],
        "measured": {p: t for p, t in measured.items() if p in kept},
    }


def run(out_dir: Path, quick: bool = False, parts: str | None = None) -> dict[str, Any]:
    """Run the chosen sets (all by default); a partial run keeps the others' previous rows."""
    chosen = parse_parts(parts)
    path = out_dir / "turns.json"
    previous = json.loads(path.read_text()) if path.is_file() and set(chosen) != set(SETS) else None
    result = merge(previous, asyncio.run(_run(quick, chosen)), chosen)
    path.write_text(json.dumps(result, indent=1))
    _plot(result, out_dir / "turns.png")
    return result


def _plot(result: dict[str, Any], path: Path) -> None:
    """One row of panels per set: latency CDF per mode and part, premature cuts per part."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = [name for name in SETS if any(set_of(r) == name for rows in result["rows"].values() for r in rows)]
    fig, grid = plt.subplots(len(sets), 2, figsize=(11, 4 * len(sets)), squeeze=False)
    for (left, right), name in zip(grid, sets, strict=True):
        labels, values = [], []
        for mode, rows in result["rows"].items():
            mine = [r for r in rows if set_of(r) == name]
            for part in dict.fromkeys(part_of(r) for r in mine):
                lat = sorted(r["latency_ms"] for r in mine if part_of(r) == part and r["latency_ms"] is not None)
                if lat:
                    left.plot(lat, np.linspace(0, 1, len(lat)), marker=".", label=f"{mode} {part}")
                summary = result["summary"][mode][part]
                labels.append(f"{mode}\n{part}")
                values.append(100 * summary["premature_per_pause"])
        left.set_xlabel("end-of-turn decision after the true end (ms)")
        left.set_ylabel("fraction of utterances")
        left.set_title(SET_TITLES[name])
        left.legend(fontsize="small")
        right.bar(labels, values)
        right.set_ylabel("premature cuts per intra-utterance pause (%)")
        measured = result.get("measured", {}).get(name)
        right.set_title(f"measured {measured[:10]}" if measured else "measured in an earlier run")
        right.tick_params(axis="x", labelsize="small")
    fig.suptitle("Turn taking")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def print_table(summary: dict[str, Any]) -> None:
    """One line per mode and part (for the report)."""
    for mode, parts in summary.items():
        for part, s in parts.items():
            print(f"{mode:10} {part:8} {json.dumps(s)}")
