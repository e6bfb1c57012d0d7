"""Barge-in over a real call, client-measured -- ``parley bench bargein``.

Issue 11's acceptance: a real voice talking over the agent at 0.3 s, 1 s and 3 s into a
reply gets ``interrupted`` within 300 ms and the audio stopped within 400 ms, every time;
the agent's own echo alone at -8 dB in the mic interrupts it 0 times over 5 replies.

A served node (``bench.serverproc``, socrates, local models) takes calls from a headless
client whose microphone hears the agent through a small room (``parley.call.echo``: echo
at ``ECHO_DB``, ``ECHO_DELAY_MS`` after it was received -- a laptop without browser echo
cancellation). Voices are recordings of a real person (``bench.real_speech``, Asterisk's
prompts): questions such as ``vm-sorry``, and the interjection ``tt-weasels`` ("Weasels
have eaten our phone system").

* **barge-in** (one call, the first trial on the call's first reply): a question; at
  0.3 / 1 / 3 s after the reply's first voiced frame *arrived at the client*, the
  interjection's voice onset goes out. Measured at the client from that onset: the
  ``interrupted`` event, and the last voiced frame of the reply received (audio stopped);
  and whether the interjection's words reach an ``stt-final``. The agent's reply to the
  interjection is the next trial's reply (a new question when it is too short).
* **echo only** (a fresh call): questions and whole replies with the echo in the mic and
  nobody talking over them; every ``interrupted`` / ``turn-resumed`` is a
  self-interruption -- unless it came while the question was still being said (a reply
  begun in one of its pauses and cut by its next words: counted as ``cut_by_the_question``).
* **first reply** rows: every trial in a call of its own, on the call's first reply --
  before the echo canceller has converged, when only the double-talk detector can vouch
  for the user (``pipeline.dsp.doubletalk``).

Rows: the server's defaults (barge-in and echo-only calls, as above); first replies with
the echo, and with none (``headphones``: no loudspeaker path, or a client with its own echo
cancellation), with the defaults and with ``PARLEY_DOUBLE_TALK=1`` (the double-talk
detector on).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np

from bench.real_speech import asterisk_prompt, normalize_words
from bench.serverproc import parley_servers
from parley.call.client import CallClient
from pipeline.audio import RATE, rms_dbfs

OFFSETS_S = (0.3, 1.0, 3.0)
TARGET_INTERRUPTED_MS = 300.0
TARGET_STOPPED_MS = 400.0
ECHO_DB = -8.0
ECHO_DELAY_MS = 120.0
QUESTIONS = ("vm-sorry", "conf-onlyperson", "vm-nobodyavail", "demo-nomatch")
INTERJECTION = "tt-weasels"
DT = {"PARLEY_DOUBLE_TALK": "1"}
#: row name -> (server environment, echo level in the client's mic (None: no echo), every
#: trial on a call's first reply)
ROWS: dict[str, tuple[dict[str, str], float | None, bool]] = {
    "default": ({}, ECHO_DB, False),
    "first reply": ({}, ECHO_DB, True),
    "first reply, double-talk": (DT, ECHO_DB, True),
    "first reply, headphones": ({}, None, True),
    "first reply, headphones, double-talk": (DT, None, True),
}
REPLY_TIMEOUT_S = 60.0
MISS_MS = 2500.0  # where the plot draws a barge-in that never came (first replies take up to ~2 s)
SETTLE_S = 2.0  # after a reply, the echo's tail and any late event
QUESTION_REACH_S = 0.6  # the question's last words can still confirm a barge-in this much later


class Voice:
    """A recorded utterance trimmed to 0.1 s around its speech; ``lead_s`` to the voice onset."""

    def __init__(self, name: str) -> None:
        u = asterisk_prompt(name)
        start = max(0, int((u.start_s - 0.1) * RATE))
        self.name, self.text = name, u.text
        self.pcm = u.pcm[start : int((u.end_s + 0.1) * RATE)]
        self.lead_s = u.start_s - start / RATE
        self.dbfs = round(rms_dbfs(self.pcm), 1)


def _events(client: CallClient, since: float, until: float = float("inf")) -> list[tuple[float, dict[str, Any]]]:
    return [(t, e) for t, e in client.events if since <= t < until]


async def _first_voiced(client: CallClient, since: float, timeout: float = 15.0) -> float | None:
    """Arrival time of the first voiced frame received after ``since``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        voiced = client.voiced_between(since)
        if voiced:
            return voiced[0].t
        await asyncio.sleep(0.01)
    return None


async def _ask(client: CallClient, question: Voice) -> float:
    """Say ``question``; returns when its reply's ``tts-start`` came (TimeoutError if none)."""
    since = time.monotonic()
    client.say(question.pcm)
    await client.wait_event(lambda e: e["type"] == "tts-start", timeout=REPLY_TIMEOUT_S, since=since)
    return next(t for t, e in _events(client, since) if e["type"] == "tts-start")


async def _question(client: CallClient, question: Voice, offset: float, skipped: list[dict[str, Any]]) -> float | None:
    """:func:`_ask`; None, noted in ``skipped``, when no reply came."""
    try:
        return await _ask(client, question)
    except TimeoutError:
        skipped.append({"offset_s": offset, "skipped": "no reply to the question"})
        return None


def _reply_over(client: CallClient, since: float) -> bool:
    return any(e["type"] in ("tts-end", "interrupted") for _, e in _events(client, since))


async def _trial(client: CallClient, t_start: float, offset: float, interjection: Voice) -> dict[str, Any]:
    """Talk over the reply that started at ``t_start``, ``offset`` s into its audio."""
    first = await _first_voiced(client, t_start)
    if first is None:
        return {"offset_s": offset, "skipped": "no reply audio"}
    await asyncio.sleep(max(0.0, first + offset - interjection.lead_s - time.monotonic()))
    if _reply_over(client, t_start):
        return {"offset_s": offset, "skipped": "reply over before the interjection"}
    playback = client.say(interjection.pcm)
    await playback.done
    t_onset = (playback.started_at or time.monotonic()) + interjection.lead_s
    try:
        await client.wait_event(lambda e: e["type"] == "tts-start", timeout=REPLY_TIMEOUT_S, since=t_onset + 0.3)
    except TimeoutError:
        pass
    events = _events(client, first)
    next_reply = next((t for t, e in events if e["type"] == "tts-start" and t > t_onset + 0.3), None)
    # the interjection's own turn ends before any reply to it can play: the interrupted
    # reply's audio is what was received up to then
    t_next = next((t for t, e in events if e["type"] in ("end-of-turn", "tts-start") and t > t_onset + 0.3),
                  time.monotonic())
    interrupted = next((t for t, e in events if e["type"] == "interrupted"), None)
    resumed = next((t for t, e in events if e["type"] == "turn-resumed"), None)
    voiced = client.voiced_between(first, t_next)
    stopped = max((r.t + 0.01 for r in voiced if r.t >= t_onset), default=t_onset)
    finals = " ".join(e["text"] for t, e in events if e["type"] == "stt-final" and t >= t_onset)
    said = set(normalize_words(interjection.text))
    return {
        "offset_s": offset,
        "offset_actual_s": round(t_onset - first, 3),
        "interrupted_ms": None if interrupted is None else round((interrupted - t_onset) * 1000, 1),
        "turn_resumed_ms": None if resumed is None else round((resumed - t_onset) * 1000, 1),
        "stopped_ms": round((stopped - t_onset) * 1000, 1),
        "stt_final": finals,
        "words_heard": round(len(said & set(normalize_words(finals))) / len(said), 2),
        "reply_dbfs": round(float(np.mean([rms_dbfs(r.pcm) for r in voiced])), 1) if voiced else None,
        "next_reply": next_reply,
        "timeline": [(round((t - t_onset) * 1000), e["type"]) for t, e in events
                     if e["type"] not in ("llm-token", "stt-interim", "metrics")],
        "voiced_runs_ms": _runs(client, first, t_next, t_onset),
    }


def _report(offset: float, trial: dict[str, Any]) -> None:
    print(f"   offset {offset} s: {json.dumps({k: v for k, v in trial.items() if k != 'timeline'})}", flush=True)


def ended_by_itself(trial: dict[str, Any]) -> bool:
    """The reply finished on its own as the user began (its audio over within 100 ms of the
    onset, ``tts-end``, neither ``interrupted`` nor ``turn-resumed``): no barge-in to measure."""
    return (trial.get("interrupted_ms") is None and trial.get("turn_resumed_ms") is None
            and trial.get("stopped_ms", 1e9) < 100 and any(kind == "tts-end" for _, kind in trial.get("timeline", [])))


def _runs(client: CallClient, since: float, until: float, origin: float) -> list[tuple[int, int]]:
    """Runs of voiced received frames (gaps < 100 ms bridged), in ms from ``origin``."""
    runs: list[list[float]] = []
    for r in client.voiced_between(since, until):
        if runs and r.t - runs[-1][1] < 0.1:
            runs[-1][1] = r.t + 0.01
        else:
            runs.append([r.t, r.t + 0.01])
    return [(round((a - origin) * 1000), round((b - origin) * 1000)) for a, b in runs]


@contextlib.asynccontextmanager
async def _call(url: str, echo_db: float | None) -> AsyncIterator[CallClient]:
    """A connected client (echo path at ``echo_db``, None: none); a node still tearing down
    the last call says 503 busy."""
    for attempt in range(10):
        client = CallClient(url, "socrates", echo_db=echo_db, echo_delay_ms=ECHO_DELAY_MS)
        try:
            await client.connect()
        except RuntimeError as exc:
            await client.close()
            if "503" not in str(exc) or attempt == 9:
                raise
            await asyncio.sleep(2.0)
            continue
        try:
            yield client
        finally:
            await client.close()
        return


async def _bargein_call(url: str, echo_db: float | None, per_offset: int, questions: list[Voice],
                        interjection: Voice) -> dict[str, Any]:
    trials: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []  # replies too short for their offset, or over at the onset
    plan = [offset for _ in range(per_offset) for offset in OFFSETS_S]
    async with _call(url, echo_db) as client:
        t_reply: float | None = None
        attempts = 0
        while plan and attempts < 3 * len(OFFSETS_S) * per_offset + 3:
            attempts += 1
            if t_reply is None:
                t_reply = await _question(client, questions[attempts % len(questions)], plan[0], skipped)
                if t_reply is None:
                    continue
            trial = await _trial(client, t_reply, plan[0], interjection)
            t_reply = trial.pop("next_reply", None)
            _report(plan[0], trial)
            if ended_by_itself(trial):
                trial["skipped"] = "reply ended by itself at the onset"
            if "skipped" not in trial:
                trial["first_reply_of_call"] = not trials
                trials.append(trial)
                plan.pop(0)
            else:
                skipped.append(trial)
            if t_reply is None or "skipped" in trial:
                await _settle(client)
                t_reply = None
        echo_db = client.echo.measured_db if client.echo else None
    return {"trials": trials, "skipped": skipped, "echo_measured_db": None if echo_db is None else round(echo_db, 1)}


async def _first_reply_calls(url: str, echo_db: float | None, per_offset: int, questions: list[Voice],
                             interjection: Voice) -> dict[str, Any]:
    """Each trial in a fresh call, on its first reply; a reply over before its offset is
    tried again in a new call, with the next question."""
    trials: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    plan = [offset for _ in range(per_offset) for offset in OFFSETS_S]
    for attempt in range(3 * len(plan)):
        if not plan:
            break
        async with _call(url, echo_db) as client:
            t_reply = await _question(client, questions[attempt % len(questions)], plan[0], skipped)
            if t_reply is None:
                continue
            trial = await _trial(client, t_reply, plan[0], interjection)
        trial.pop("next_reply", None)
        _report(plan[0], trial)
        if "skipped" in trial or ended_by_itself(trial):
            skipped.append(trial)
            continue
        trials.append({**trial, "first_reply_of_call": True})
        plan.pop(0)
    return {"trials": trials, "skipped": skipped, "echo_measured_db": None}


async def _settle(client: CallClient, timeout: float = REPLY_TIMEOUT_S) -> None:
    """Wait until the agent is silent (its reply over) and the echo's tail has died."""
    for _ in range(int(timeout / 0.1)):
        if not client.voiced_between(time.monotonic() - SETTLE_S):
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)


async def _echo_call(url: str, replies: int, questions: list[Voice]) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    if not replies:  # a row without echo: nothing to take for the user
        return {"replies": rows, "echo_measured_db": None}
    async with _call(url, ECHO_DB) as client:
        for i in range(replies):
            question, since = questions[i % len(questions)], time.monotonic()
            playback = client.say(question.pcm)
            try:
                await client.wait_event(lambda e: e["type"] == "tts-start", timeout=REPLY_TIMEOUT_S, since=since)
                await client.wait_event(lambda e: e["type"] in ("tts-end", "interrupted"), timeout=REPLY_TIMEOUT_S,
                                        since=since)
            except TimeoutError:
                rows.append({"question": question.name, "skipped": "no reply"})
                continue
            await _settle(client)
            rows.append(_echo_row(client, question, since, playback.started_at or since))
            print(f"   echo reply {i + 1}: {json.dumps(rows[-1])}", flush=True)
        echo_db = client.echo.measured_db if client.echo else None
    return {"replies": rows, "echo_measured_db": None if echo_db is None else round(echo_db, 1)}


def _echo_row(client: CallClient, question: Voice, since: float, spoken_at: float) -> dict[str, Any]:
    """One echo-only reply's events. An ``interrupted`` / ``turn-resumed`` while the question
    was still being said (a reply started in one of its pauses, cut by its next words) is the
    user's doing: counted apart. Only those later, with nothing in the mic but the echo, are
    self-interruptions."""
    voice_end = spoken_at + question.pcm.size / RATE - 0.1 + QUESTION_REACH_S
    events = _events(client, since)
    cuts = [(t, e["type"]) for t, e in events if e["type"] in ("interrupted", "turn-resumed")]
    return {
        "question": question.name,
        "interrupted": sum(1 for t, k in cuts if k == "interrupted" and t > voice_end),
        "turn_resumed": sum(1 for t, k in cuts if k == "turn-resumed" and t > voice_end),
        "cut_by_the_question": sum(1 for t, _ in cuts if t <= voice_end),
        "replies": sum(1 for _, e in events if e["type"] == "tts-start"),
        "stt_finals": sum(1 for _, e in events if e["type"] == "stt-final"),
        "reply_s": round(len(client.voiced_between(since)) * 0.01, 2),
    }


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "max": None}
    return {"median": round(statistics.median(values), 1), "max": round(max(values), 1)}


def summarize(barge: dict[str, Any], echo: dict[str, Any], per_offset: int, echo_replies: int) -> dict[str, Any]:
    """Medians, maxima and pass/fail per offset and overall, against the issue's targets."""
    out: dict[str, Any] = {}
    ok_all = True
    for offset in OFFSETS_S:
        mine = [t for t in barge["trials"] if t["offset_s"] == offset and not ended_by_itself(t)]
        interrupted = [t["interrupted_ms"] for t in mine if t["interrupted_ms"] is not None]
        stopped = [t["stopped_ms"] for t in mine]
        ok = (len(mine) == per_offset and len(interrupted) == len(mine)
              and all(0 <= v <= TARGET_INTERRUPTED_MS for v in interrupted)
              and all(v <= TARGET_STOPPED_MS for v in stopped))
        ok_all &= ok
        out[f"{offset:g}s"] = {
            "trials": len(mine), "missed": len(mine) - len(interrupted),
            "interrupted_ms": _stats(interrupted), "stopped_ms": _stats(stopped),
            "words_heard": _stats([t["words_heard"] for t in mine]), "pass": ok,
        }
    measured = [r for r in echo["replies"] if "skipped" not in r]
    self_interruptions = sum(r["interrupted"] + r["turn_resumed"] for r in measured)
    return {
        "bargein": out, "bargein_pass": ok_all,
        "excluded_ended_by_itself": sum(ended_by_itself(t) for t in barge["trials"]),
        "echo_replies": len(measured), "self_interruptions": self_interruptions,
        "self_interrupted_replies": sum(1 for r in measured if r["interrupted"] or r["turn_resumed"]),
        "cut_by_the_question": sum(r.get("cut_by_the_question", 0) for r in measured),
        "echo_pass": len(measured) >= echo_replies and self_interruptions == 0,
        "echo_measured_db": {"bargein_call": barge["echo_measured_db"], "echo_call": echo["echo_measured_db"]},
    }


async def _row(url: str, echo_db: float | None, first_replies: bool, per_offset: int,
               echo_replies: int) -> dict[str, Any]:
    questions, interjection = [Voice(q) for q in QUESTIONS], Voice(INTERJECTION)
    trials = _first_reply_calls if first_replies else _bargein_call
    barge = await trials(url, echo_db, per_offset, questions, interjection)
    echo = await _echo_call(url, echo_replies, questions)
    return {"bargein": barge, "echo": echo, "summary": summarize(barge, echo, per_offset, echo_replies),
            "voices_dbfs": {v.name: v.dbfs for v in [*questions, interjection]}}


def run(out_dir: Path, quick: bool = False) -> dict[str, Any]:
    per_offset, echo_replies = (1, 2) if quick else (5, 5)
    rows = {}
    for name, (env, echo_db, first_replies) in ROWS.items():
        print(f"== row {name}", flush=True)
        with parley_servers(1, {"PARLEY_PERSONA": "socrates", **env}) as urls:
            rows[name] = asyncio.run(_row(urls[0], echo_db, first_replies, per_offset,
                                          0 if first_replies else echo_replies))
    result = {
        "targets": {"interrupted_ms": TARGET_INTERRUPTED_MS, "stopped_ms": TARGET_STOPPED_MS,
                    "self_interruptions": 0},
        "echo": {"level_db": ECHO_DB, "delay_ms": ECHO_DELAY_MS},
        "offsets_s": list(OFFSETS_S), "per_offset": per_offset, "echo_replies": echo_replies,
        "rows": rows, "summary": {name: row["summary"] for name, row in rows.items()},
    }
    (out_dir / "bargein.json").write_text(json.dumps(result, indent=1))
    _plot(result, out_dir / "bargein.png")
    return result


def _plot(result: dict[str, Any], path: Path) -> None:
    """Per row: each trial's interrupted / stopped delay by offset, with the targets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, axes = plt.subplots(1, len(rows), figsize=(5.5 * len(rows), 4), squeeze=False)
    for ax, (name, row) in zip(axes[0], rows.items(), strict=True):  # one panel per row
        trials = [t for t in row["bargein"]["trials"] if not ended_by_itself(t)]
        series = (("interrupted_ms", "o", TARGET_INTERRUPTED_MS), ("stopped_ms", "x", TARGET_STOPPED_MS))
        for key, marker, target in series:
            xs = [OFFSETS_S.index(t["offset_s"]) + (0.1 if marker == "x" else -0.1) for t in trials]
            ys = [t[key] if t[key] is not None else MISS_MS for t in trials]  # a miss is drawn at the top
            ax.scatter(xs, ys, marker=marker, label=key.replace("_ms", ""))
            ax.axhline(target, linestyle="--", linewidth=0.8, color="C0" if marker == "o" else "C1")
        ax.set_xticks(range(len(OFFSETS_S)), [f"{o:g} s into reply" for o in OFFSETS_S])
        ax.set_ylabel("after the interjection's voice onset (ms)")
        ax.set_ylim(-100, MISS_MS + 100)
        s = row["summary"]
        ax.set_title(f"{name}: echo alone interrupted {s['self_interrupted_replies']} of {s['echo_replies']} replies"
                     if s["echo_replies"] else name)
        ax.legend(fontsize="small")
    fig.suptitle(f"Barge-in by a real voice, echo {ECHO_DB:g} dB in the mic or none (client-measured)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
