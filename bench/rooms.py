"""``parley bench rooms``: what a multi-party room costs and how well its agent behaves.

Four measurements, written to ``rooms.json`` and ``rooms.png``:

1. **CPU per participant** (in-process, no network): the mixer's tick for N people, and
   one participant's DSP chain (AEC, VAD, RNNoise, AGC, gate) per second of audio.
2. **Largest room** one worker holds: a ``parley serve`` process (the agent, Whisper and
   all) and the participants' aiortc peers in a separate process, rooms of growing size,
   each person talking in turn and overlapping; late frames per participant (mixer ticks
   more than a frame late, plus frames dropped for a lagging sender) must stay ≤ 0.5 %.
3. **Own-voice leakage**: each participant speaks on its own carrier frequency; in what
   each receives, its own band against the others' (dB).
4. **Addressing**: an unaddressed two-person conversation (espeak voices, real Whisper
   transcripts, the real floor policy) — false activations per 10 minutes — and questions
   that name the agent in various ways — the share answered. This runs the same STT and
   policy code as a room, offline and faster than real time.

The client peers share this 2-core machine with the server (and, when this was run, with
other engineers' test suites), so the late-frame and capacity figures are pessimistic.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.serverproc import parley_servers
from pipeline.audio import FRAME_10MS, RATE

LATE_LIMIT = 0.005
NO_TRACE_DB = 120.0  # own band digitally silent: report this rather than log(0)
STEP_S = 15.0
UNADDRESSED = [
    "I think we should get some lunch soon.", "Yes, the pizza place on the corner is good.",
    "Did you finish the report for Monday?", "Almost, I still need the sales figures.",
    "The crates arrived at the warehouse this morning.", "Social media is taking too much of my time.",
    "Let us meet again on Thursday afternoon.", "The weather has been strange this week.",
    "My sister is visiting from Chicago.", "We could take the train instead of driving.",
    "How was the concert last night?", "It was loud, but the band was great.",
    "Remember to water the plants.", "I read a book about ancient Greece.",
    "The philosophy class starts at nine.", "Can you send me the slides?",
    "I will call the plumber tomorrow.", "That restaurant closed last year.",
    "The kids are playing football outside.", "Let us ask the others what they think.",
]
ADDRESSED = [
    "Socrates, what is justice?", "What do you think, Socrates?", "Hey Socrates, is virtue teachable?",
    "Socrates, can you help us settle this?", "Tell us, Socrates, what is courage?",
    "Socrates, what is the meaning of a good life?", "Is that right, Socrates?",
    "Socrates, do you agree with her?", "Okay Socrates, what is wisdom?", "Socrates, what is friendship?",
]
VOICES = ("en-us+m3", "en-us+f3", "en+m7", "en-us+f4")
SPEEDS = (150, 185)  # words per minute


# ---- 1. CPU per participant ---------------------------------------------------------------
def _cpu() -> dict[str, Any]:
    from media_server.rooms.mixer import Mixer
    from parley.config import Settings
    from pipeline.dsp.chain import DspChain

    rng = np.random.default_rng(1)
    mixer_us = {}
    for n in (2, 4, 6, 8, 12):
        mixer = Mixer(prefetch=2)
        for i in range(n):
            mixer.add(str(i))
        frames = (rng.standard_normal((n, 2, FRAME_10MS)) * 3000).astype(np.int16)
        start, ticks = time.perf_counter(), 500
        for _ in range(ticks):
            for i in range(n):
                mixer.push(str(i), frames[i, 0])
                mixer.push(str(i), frames[i, 1])
            mixer.tick(frames[0].reshape(-1))
        mixer_us[n] = (time.perf_counter() - start) / ticks * 1e6
    chain = DspChain(Settings())
    t = np.arange(RATE * 4) / RATE
    speech = (np.sin(2 * np.pi * 220 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) * 6000).astype(np.int16)
    frames = speech.reshape(-1, FRAME_10MS)
    start = time.perf_counter()
    for i, frame in enumerate(frames):
        chain.far_end(frame, i * 0.01)
        chain.process(frame, i * 0.01)
    dsp_core = (time.perf_counter() - start) / (frames.shape[0] * 0.01)
    return {
        "mixer_us_per_tick": {str(n): round(v, 1) for n, v in mixer_us.items()},
        "mixer_core_per_participant": round(mixer_us[6] / 6 * 50 / 1e6, 5),
        "dsp_core_per_participant": round(dsp_core, 4),
    }


# ---- 2 + 3. rooms over real peers -------------------------------------------------------------
def _carriers(count: int, spacing: float = 25.0) -> list[float]:
    """Carrier frequencies none of whose third-order intermodulation products (2a - b,
    a + b - c: a codec or limiter is not perfectly linear) lands within ``spacing`` Hz of
    another carrier — else distortion of the others' voices would be mistaken for one's
    own voice leaking back."""
    chosen: list[float] = []
    for f in np.arange(310.0, 8000.0, 10.0):
        trial = [*chosen, float(f)]
        products = {2 * a - b for a in trial for b in trial if a != b}
        products |= {a + b - c for a in trial for b in trial for c in trial if len({a, b, c}) == 3}
        if all(abs(c - p) > spacing for c in trial for p in products) and \
                all(abs(c - d) > 2 * spacing for c in chosen for d in (f,)):
            chosen.append(float(f))
            if len(chosen) == count:
                return chosen
    raise ValueError(f"no {count} intermodulation-free carriers below 8 kHz")


CARRIERS = _carriers(10)


def _carrier(i: int) -> float:
    return CARRIERS[i]


def _voice(i: int, seconds: float) -> np.ndarray:
    """Participant ``i``'s 'speech': its own carrier, syllable-modulated."""
    t = np.arange(int(seconds * RATE)) / RATE
    envelope = 0.3 + 0.7 * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) ** 2
    return (np.sin(2 * np.pi * _carrier(i) * t) * envelope * 6000).astype(np.int16)


def _band_db(pcm: np.ndarray, freq: float) -> float:
    if pcm.size < RATE // 10:  # nothing (or next to nothing) arrived in the window
        return -180.0
    x = pcm.astype(np.float64) * np.hanning(pcm.size)
    spectrum = np.abs(np.fft.rfft(x))
    lo, hi = int((freq - 5) * pcm.size / RATE), int((freq + 5) * pcm.size / RATE) + 1
    return float(20 * np.log10(spectrum[lo:hi].max() + 1e-9))


async def _room_step(url: str, room: dict[str, Any], n: int) -> dict[str, Any]:
    from contextlib import AsyncExitStack

    from parley.call.room import RoomClient

    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(
            RoomClient(url, token=room["token"], room_id=room["room_id"], name=f"p{i}")) for i in range(n)]
        before = await _room_info_async(url, room)
        t_start = time.monotonic()
        # leakage: each speaks alone once; how loud is i's voice in what i receives, against
        # how loud it is in what the others receive (alone, so a codec's noise spread from
        # another voice near i's carrier is not mistaken for i's own voice)
        windows = []
        for i, client in enumerate(clients):
            t0 = time.monotonic()
            await client.say(_voice(i, 1.2)).done
            windows.append((t0, time.monotonic() + 1.5))  # late arrivals on a loaded machine
        end = t_start + max(STEP_S, time.monotonic() - t_start + 3.0)
        turn = 0
        while time.monotonic() < end:  # load: one at a time, and every third turn two at once
            speaking = [clients[turn % n]] + ([clients[(turn + 1) % n]] if turn % 3 == 2 else [])
            await asyncio.gather(*(c.say(_voice(clients.index(c), 1.2)).done for c in speaking))
            turn += 1
        await asyncio.sleep(1.0)
        after = await _room_info_async(url, room)
        worst = max(p["late_frames"] for p in after["participants"])
        leak = []
        for i, (t0, t1) in enumerate(windows):
            own = _band_db(clients[i].audio_between(t0, t1), _carrier(i))
            heard = [_band_db(c.audio_between(t0, t1), _carrier(i)) for j, c in enumerate(clients) if j != i]
            heard = [h for h in heard if h > -180.0]
            if heard and clients[i].audio_between(t0, t1).size >= RATE // 10:  # else nothing to compare
                leak.append(min(NO_TRACE_DB, float(np.median(heard)) - own))
        return {"leak_db": leak, "client_late": [c.frames_late for c in clients],
                "client_received": [c.frames_received for c in clients],
                "ticks": after["ticks"] - before["ticks"],
                "late_ticks": after["late_ticks"] - before["late_ticks"],
                "worst_participant_late_frames": worst}


async def _room_info_async(url: str, room: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    headers = {"Authorization": f"Bearer {room['token']}"}
    async with aiohttp.ClientSession() as http, \
            http.get(f"{url}/api/rooms/{room['room_id']}", headers=headers) as r:
        return dict(await r.json())


def _room_client_proc(url: str, room: dict[str, Any], n: int, queue: Any) -> None:
    try:
        queue.put(asyncio.run(_room_step(url, room, n)))
    except Exception as exc:  # the parent must not wait for a result that never comes
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def _rooms(sizes: list[int]) -> list[dict[str, Any]]:
    from parley.call.room import create_room

    points = []
    with parley_servers(1, {"PARLEY_ROOM_MAX_PARTICIPANTS": "64", "PARLEY_ROOM_IDLE_S": "60"}) as urls:
        url = urls[0]
        for n in sizes:
            room = asyncio.run(create_room(url, "socrates", name=f"bench {n}"))
            ctx = multiprocessing.get_context("spawn")
            queue = ctx.Queue()
            proc = ctx.Process(target=_room_client_proc, args=(url, room, n, queue))
            proc.start()
            client = queue.get(timeout=STEP_S + 240)
            proc.join(timeout=30)
            if "error" in client:
                print(f"   room of {n}: the participants failed: {client['error']}", flush=True)
                points.append({"participants": n, "error": client["error"], "late_ratio": 1.0,
                               "client_late_ratio": 1.0, "own_voice_db_below_others": 0.0})
                break
            ticks, late = client["ticks"], client["late_ticks"]
            point = {
                "participants": n, "ticks": ticks, "late_ratio": late / ticks if ticks else 1.0,
                # a participant's own count since joining: late ticks plus frames dropped
                # because its sender lagged
                "worst_participant_late_ratio": client["worst_participant_late_frames"] / ticks if ticks else 1.0,
                "client_late_ratio": max(late_n / max(1, r) for late_n, r in
                                         zip(client["client_late"], client["client_received"], strict=True)),
                "own_voice_db_below_others": round(min(client["leak_db"]), 1) if client["leak_db"] else None,
                "own_voice_measured_for": len(client["leak_db"]),
            }
            points.append(point)
            print(f"   room of {n} + agent: late {point['late_ratio']:.2%} (server), "
                  f"{point['client_late_ratio']:.2%} (worst client); own voice "
                  f"{point['own_voice_db_below_others']} dB below the others", flush=True)
    return points


# ---- 4. addressing ----------------------------------------------------------------------------
async def _transcribe_all(lines: list[str], voices: int = 2, speeds: int = 1) -> list[tuple[str, float]]:
    from bench import signals
    from parley.config import Settings
    from pipeline.agent.room import room_vocabulary
    from pipeline.backends import registry
    from pipeline.dsp.base import to_int16

    stt = registry.get("stt", "local", Settings())
    vocabulary = room_vocabulary("Socrates")  # as a room transcribes its speakers
    out = []
    for voice in VOICES[:voices]:
        for speed in SPEEDS[:speeds]:
            for text in lines:
                pcm = to_int16(signals.espeak(text, voice=voice, words_per_minute=speed))
                out.append((await stt.transcribe(pcm, final=True, vocabulary=vocabulary), pcm.size / RATE))
    return out


def _addressing(quick: bool) -> dict[str, Any]:
    """Every line in several voices and speeds: ~10 minutes of unaddressed talk (full run)."""
    from pipeline.agent.floor import Floor, Verdict, mentions

    voices, speeds = (2, 1) if quick else (len(VOICES), len(SPEEDS))
    unaddressed = asyncio.run(_transcribe_all(UNADDRESSED, voices, speeds))
    addressed = asyncio.run(_transcribe_all(ADDRESSED, voices, speeds))
    talk_s = sum(seconds + 1.0 for _, seconds in unaddressed)  # a second between turns
    result: dict[str, Any] = {"unaddressed_talk_s": round(talk_s, 1), "policies": {}}
    for policy in ("mention_only", "follow_up"):
        floor = Floor(policy, ["Socrates"])
        false = sum(floor.decide(f"p{i % 2}", f"p{i % 2}", text, 1000.0 + i * 4) is Verdict.ADDRESSED
                    for i, (text, _) in enumerate(unaddressed))
        floor = Floor(policy, ["Socrates"])
        answered = sum(floor.decide("p0", "p0", text, 0.0) is Verdict.ADDRESSED for text, _ in addressed)
        result["policies"][policy] = {
            "false_activations": false,
            "false_activations_per_10_min": round(false * 600 / talk_s, 2),
            "answer_rate": answered / len(addressed),
            "addressed_questions": len(addressed),
        }
    per_voice = len(ADDRESSED)
    result["answer_rate_by_voice"] = {
        f"{voice} {speed} wpm": sum(mentions(t, ["Socrates"]) for t, _ in addressed[k * per_voice:(k + 1) * per_voice])
        / per_voice
        for k, (voice, speed) in enumerate((v, s) for v in VOICES[:voices] for s in SPEEDS[:speeds])
    }
    result["missed"] = [t for t, _ in addressed if not mentions(t, ["Socrates"])]
    result["false"] = [t for t, _ in unaddressed if mentions(t, ["Socrates"])]
    return result


def run(out_dir: Path, quick: bool = False) -> dict[str, Any]:
    sizes = [2, 4] if quick else [2, 4, 6, 8, 10]
    cpu = _cpu()
    print(f"   cpu: {cpu}", flush=True)
    addressing = _addressing(quick)
    print(f"   addressing: {addressing['policies']}", flush=True)
    points = _rooms(sizes)
    fits = [p["participants"] for p in points
            if max(p["late_ratio"], p.get("worst_participant_late_ratio", 1.0)) <= LATE_LIMIT]
    result = {
        "late_limit": LATE_LIMIT, "step_seconds": STEP_S, "cpu": cpu, "rooms": points,
        "addressing": addressing,
        "summary": {
            "largest_room_under_limit": max(fits) if fits else 0,
            "mixer_plus_dsp_core_per_participant": round(cpu["mixer_core_per_participant"]
                                                         + cpu["dsp_core_per_participant"], 4),
            "own_voice_db_below_others_min": min((p["own_voice_db_below_others"] for p in points
                                                  if p.get("own_voice_db_below_others") is not None), default=None),
            **{f"{k}_false_per_10min": v["false_activations_per_10_min"]
               for k, v in addressing["policies"].items()},
            **{f"{k}_answer_rate": v["answer_rate"] for k, v in addressing["policies"].items()},
        },
    }
    (out_dir / "rooms.json").write_text(json.dumps(result, indent=1))
    _plot(points, out_dir / "rooms.png")
    return result


def _plot(points: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    xs = [p["participants"] for p in points]
    ax1.plot(xs, [100 * p["late_ratio"] for p in points], marker="o", label="mixer ticks late (server)")
    ax1.plot(xs, [100 * p["client_late_ratio"] for p in points], marker="s", label="worst client")
    ax1.axhline(100 * LATE_LIMIT, color="red", linestyle="--", label="0.5 % limit")
    ax1.set_xlabel("participants (+ the agent)")
    ax1.set_ylabel("late frames (%)")
    ax1.legend()
    ax2.plot(xs, [p.get("own_voice_db_below_others") or float("nan") for p in points], marker="o")
    ax2.axhline(40, color="red", linestyle="--", label="40 dB target")
    ax2.set_xlabel("participants")
    ax2.set_ylabel("own voice below the others (dB)")
    ax2.legend()
    fig.suptitle("Parley rooms on one worker (clients on the same loaded 2-core machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
