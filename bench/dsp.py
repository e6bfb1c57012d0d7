"""DSP front end: cost per stage, echo cancellation quality (both AECs), NS, VAD, end of turn.

Everything runs on signals made here (Piper for the agent, espeak-ng for the user, a
simulated room, loudspeaker and network delay; see ``bench.signals``), fed to the
chain exactly as a call feeds it. Cost is per 10 ms frame on this machine, measured while
the agent talks (the AEC working) and while it is silent (the AEC idle), since a call
spends time in both. CPU time is shared with whatever else runs: medians are stable,
p95s less so.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import signals as sim
from parley.config import Settings
from pipeline.audio import FRAME_10MS, RATE
from pipeline.dsp import ns
from pipeline.dsp.base import FrameMeta
from pipeline.dsp.chain import DspChain
from pipeline.dsp.ns import RnnoiseStage
from pipeline.dsp.turn import TurnDetector, TurnEventKind

AECS = ("numpy", "apm")
STEADY = ((3.0, 6.0), (10.0, 13.0))  # far-end single talk after convergence (s)
DOUBLE_TALK = (6.2, 9.0)
WINDOW_S = 0.1
SHOWN_DELAY_MS = 120.0  # the run whose cost and ERLE-over-time are reported


def run(out_dir: Path, quick: bool = False) -> dict[str, Any]:
    far = np.concatenate([sim.piper(t) for t in sim.AGENT_SENTENCES])
    user = [sim.espeak(t) for t in sim.USER_SENTENCES]
    delays = (SHOWN_DELAY_MS, 300.0) if quick else (40.0, SHOWN_DELAY_MS, 200.0, 300.0, 480.0)
    aec = {kind: _aec_figures(kind, far, user, delays) for kind in AECS}
    result: dict[str, Any] = {
        "aec": {k: {n: v for n, v in fig.items() if n != "erle_series"} for k, fig in aec.items()},
        "ns_kernel": _kernel_figures(user),
        "ns": _ns_figures(user),
        "vad": _vad_figures(user),
        "end_of_turn": _eot_figures(user),
    }
    result["summary"] = _summary(result)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "dsp.json").write_text(json.dumps(result, indent=1) + "\n")
    _plot(out_dir / "dsp.png", aec, result)
    return result


# -- echo cancellation --------------------------------------------------------------------
def _timed_call(kind: str, scenario: sim.EchoScenario) -> tuple[np.ndarray, list[FrameMeta], dict[str, list[float]]]:
    """Run the full chain on a call, timing every stage of every frame (microseconds)."""
    chain = DspChain(Settings(aec=kind))
    times: dict[str, list[float]] = {stage.name: [] for stage in chain.stages}
    times["chain"] = []
    metas: list[FrameMeta] = []
    aec_out: list[np.ndarray] = []

    def process(frame: np.ndarray, t: float) -> None:
        meta = FrameMeta(t=t)
        start = time.perf_counter_ns()
        for stage in chain.stages:
            t0 = time.perf_counter_ns()
            frame = stage.process(frame, meta)
            times[stage.name].append((time.perf_counter_ns() - t0) / 1000.0)
            if stage is chain.echo:
                aec_out.append(frame)
        times["chain"].append((time.perf_counter_ns() - start) / 1000.0)
        metas.append(meta)

    sim.run_call(process, chain.far_end, scenario.mic, scenario.far)
    out = np.concatenate(aec_out).astype(np.float32) / 32768.0
    return sim.align(out, chain.echo.latency_samples), metas, times


def _aec_figures(kind: str, far: np.ndarray, user: list[np.ndarray], delays: tuple[float, ...]) -> dict[str, Any]:
    near = np.concatenate(user)
    per_delay, cost, series = {}, {}, []
    for delay_ms in delays:
        scenario = sim.echo_scenario(far, near, np.random.default_rng(int(delay_ms)), delay_ms)
        out, metas, times = _timed_call(kind, scenario)
        per_delay[str(int(delay_ms))] = _echo_quality(scenario, out, metas)
        if delay_ms == SHOWN_DELAY_MS:
            cost, series = _cost(times, metas), _erle_series(scenario, out)
    change = sim.echo_scenario(far, near, np.random.default_rng(5), 120.0, delay_change_ms=60.0)
    out, metas, _ = _timed_call(kind, change)
    recovered = _recovery_s(change, out, 9.0)
    return {
        "by_delay_ms": per_delay,
        "erle_steady_db": float(np.mean([d["erle_steady_db"] for d in per_delay.values()])),
        "erle_steady_min_db": float(np.min([d["erle_steady_db"] for d in per_delay.values()])),
        "double_talk_user_snr_db": float(np.mean([d["double_talk_user_snr_db"] for d in per_delay.values()])),
        "double_talk_input_snr_db": float(np.mean([d["double_talk_input_snr_db"] for d in per_delay.values()])),
        "erle_after_double_talk_db": float(np.mean([d["erle_after_double_talk_db"] for d in per_delay.values()])),
        "delay_change_recovery_s": recovered,
        "us_per_frame": cost,
        "erle_series": series,
    }


def _kernel_figures(user: list[np.ndarray]) -> dict[str, Any]:
    """RNNoise per frame on the wheel's float path and on the int8 kernel: one state over
    noisy speech, the kernel switched every 10 frames so both see the same machine load."""
    pcm = sim.to_pcm(_noisy(_talk(user, 1.0), "pink", 10.0, np.random.default_rng(6)))
    stage, meta = RnnoiseStage(), FrameMeta(t=0.0)
    times: dict[str, list[float]] = {"float": [], "int8": []}
    try:
        for n, i in enumerate(range(0, len(pcm) - FRAME_10MS + 1, FRAME_10MS)):
            kernel = ("float", "int8")[n // 10 % 2]
            if n % 10 == 0 and not ns.use_kernel(kernel):
                return {kernel: "not available (make builds pipeline/dsp/_rnnoise_avx2.so)"}
            t0 = time.perf_counter_ns()
            stage.process(pcm[i : i + FRAME_10MS], meta)
            times[kernel].append((time.perf_counter_ns() - t0) / 1000.0)
    finally:
        ns.use_kernel("int8")
    figures: dict[str, Any] = {
        k: {"median": round(float(np.median(v)), 1), "p95": round(float(np.percentile(v, 95)), 1)}
        for k, v in times.items()
    }
    figures["speedup"] = round(figures["float"]["median"] / figures["int8"]["median"], 2)
    return figures


def _echo_quality(scenario: sim.EchoScenario, out: np.ndarray, metas: list[FrameMeta]) -> dict[str, Any]:
    mic = np.concatenate([scenario.mic[int(a * RATE) : int(b * RATE)] for a, b in STEADY])
    steady = np.concatenate([out[int(a * RATE) : int(b * RATE)] for a, b in STEADY])
    a, b = (int(x * RATE) for x in DOUBLE_TALK)
    known = [i for i, m in enumerate(metas) if m.echo_delay_ms is not None]
    return {
        "erle_steady_db": sim.rms_db(mic) - sim.rms_db(steady),
        "erle_after_double_talk_db": sim.erle_db(scenario.mic, out, 9.5, 13.0),
        "double_talk_user_snr_db": sim.spectral_snr_db(scenario.near[a:b], out[a:b]),
        "double_talk_input_snr_db": sim.spectral_snr_db(scenario.near[a:b], scenario.mic[a:b]),
        "time_to_20db_s": _recovery_s(scenario, out, 0.0),
        "delay_found_s": known[0] * 0.01 if known else None,
        "delay_estimate_ms": metas[-1].echo_delay_ms,
    }


def _erle_series(scenario: sim.EchoScenario, out: np.ndarray) -> list[float]:
    step = int(WINDOW_S * RATE)
    return [
        sim.rms_db(scenario.mic[i : i + step]) - sim.rms_db(out[i : i + step])
        for i in range(0, len(out) - step, step)
    ]


def _recovery_s(scenario: sim.EchoScenario, out: np.ndarray, since_s: float) -> float | None:
    """Seconds from ``since_s`` until ERLE stays >= 20 dB over a 0.5 s window."""
    for t in np.arange(since_s, 6.0 if since_s < 6.0 else 13.0, WINDOW_S):
        if sim.erle_db(scenario.mic, out, t, t + 0.5) >= 20.0:
            return round(float(t - since_s), 2)
    return None


def _cost(times: dict[str, list[float]], metas: list[FrameMeta]) -> dict[str, Any]:
    active = np.array([m.echo_active for m in metas])
    figures: dict[str, Any] = {}
    for name, values in times.items():
        v = np.array(values)
        figures[name] = {
            label: {"median": round(float(np.median(v[mask])), 1), "p95": round(float(np.percentile(v[mask], 95)), 1)}
            for label, mask in (("agent_talking", active), ("agent_silent", ~active))
            if mask.any()
        }
    return figures


# -- noise suppression, VAD, end of turn ---------------------------------------------------
def _talk(user: list[np.ndarray], gap_s: float = 1.5) -> np.ndarray:
    parts, t = [], 1.0
    for clip in user[:3]:
        parts.append((t, sim.set_level(clip, -26.0)))
        t += len(clip) / RATE + gap_s
    return sim.place(int(t * RATE), parts)


def _chain_metas(signal: np.ndarray) -> tuple[np.ndarray, list[FrameMeta]]:
    chain = DspChain(Settings(aec="numpy"))
    pcm = sim.to_pcm(signal)
    results = [chain.process(pcm[i : i + FRAME_10MS], i / RATE) for i in range(0, len(pcm), FRAME_10MS)]
    lag = int(chain.latency_ms / 10)
    out = np.concatenate([r[0] for r in results]).astype(np.float32) / 32768.0
    return sim.align(out, lag * FRAME_10MS), [r[1] for r in results][lag:]


def _noisy(clean: np.ndarray, kind: str, snr: float, rng: np.random.Generator) -> np.ndarray:
    noise = sim.pink_noise(len(clean), rng) if kind == "pink" else rng.standard_normal(len(clean))
    return clean + noise.astype(np.float32) * 10.0 ** ((-26.0 - snr) / 20.0)


def _snr(x: np.ndarray, labels: np.ndarray) -> float:
    power = 10.0 ** (sim.frame_levels(x) / 10.0)
    n = min(len(power), len(labels))
    noise = power[:n][~labels[:n]][20:].mean()
    return float(10.0 * np.log10(max(power[:n][labels[:n]].mean() - noise, 1e-20) / noise))


def _ns_figures(user: list[np.ndarray]) -> dict[str, Any]:
    clean = _talk(user, 1.0)
    labels = sim.speech_labels(clean)
    rng = np.random.default_rng(2)
    figures = {}
    for snr in (0.0, 5.0, 10.0, 20.0):
        noisy = _noisy(clean, "pink", snr, rng)
        out, _ = _chain_metas(noisy)
        figures[f"pink_{int(snr)}db"] = {"snr_in_db": _snr(noisy, labels), "snr_out_db": _snr(out, labels)}
    return figures


def _vad_figures(user: list[np.ndarray]) -> dict[str, Any]:
    clean = _talk(user)
    labels = sim.speech_labels(clean)
    near = np.convolve(labels, np.ones(31), "same") > 0  # 150 ms tolerance at label edges
    rng = np.random.default_rng(3)
    figures = {}
    for kind in ("pink", "white"):
        for snr in (20.0, 10.0, 5.0, 0.0):
            _, metas = _chain_metas(_noisy(clean, kind, snr, rng))
            d = np.array([m.is_speech for m in metas])[: len(labels)]
            figures[f"{kind}_{int(snr)}db"] = {
                "precision": float((d & near[: len(d)]).sum() / max(1, d.sum())),
                "recall": float((d & labels[: len(d)]).sum() / labels[: len(d)].sum()),
            }
    return figures


def _eot_figures(user: list[np.ndarray]) -> dict[str, Any]:
    """Added latency from the end of each sentence to END_OF_TURN, per transcript hint."""
    rng = np.random.default_rng(4)
    figures: dict[str, list[float]] = {"sentence_end_hint": [], "no_hint": [], "trailing_and": []}
    for text, clip in zip(sim.USER_SENTENCES, user, strict=True):
        clip = sim.set_level(clip, -26.0)
        clean = sim.place(len(clip) + 3 * RATE, [(0.5, clip)])
        signal = clean + sim.pink_noise(len(clean), rng) * 10.0 ** (-60.0 / 20.0)
        end = int(np.nonzero(sim.speech_labels(clean))[0][-1]) + 1
        hints = {"sentence_end_hint": text, "no_hint": None, "trailing_and": text.rstrip(".?!") + " and"}
        for name, hint in hints.items():
            added = _eot_added_ms(signal, end, hint)
            if added is not None:
                figures[name].append(added)
    return {
        name: {"median_ms": float(np.median(v)), "max_ms": float(np.max(v)), "n": len(v)}
        for name, v in figures.items()
        if v
    }


def _eot_added_ms(signal: np.ndarray, end: int, hint: str | None) -> float | None:
    chain, turns = DspChain(Settings(aec="numpy")), TurnDetector()
    pcm = sim.to_pcm(signal)
    for n, i in enumerate(range(0, len(pcm), FRAME_10MS)):
        if hint is not None and n == end + 10:  # the transcript lands 100 ms after the last word
            turns.hint_transcript(hint)
        out, meta = chain.process(pcm[i : i + FRAME_10MS], n * 0.01)
        event = turns.push(out, meta)
        if event is not None and event.kind is TurnEventKind.END_OF_TURN:
            return float((n - end) * 10)
    return None


# -- report ------------------------------------------------------------------------------
def _summary(result: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for kind, fig in result["aec"].items():
        cost = fig["us_per_frame"]
        summary[kind] = {
            "erle_db": round(fig["erle_steady_db"], 1),
            "double_talk_user_snr_db": round(fig["double_talk_user_snr_db"], 1),
            "aec_us_talking": cost["aec"]["agent_talking"]["median"],
            "aec_us_silent": cost["aec"].get("agent_silent", {}).get("median"),
            "chain_us_talking": cost["chain"]["agent_talking"]["median"],
        }
    summary["rnnoise_us"] = result["aec"]["numpy"]["us_per_frame"]["ns"]["agent_talking"]["median"]
    kernels = result["ns_kernel"]
    if "speedup" in kernels:
        summary["rnnoise_us_float_vs_int8"] = [
            kernels["float"]["median"], kernels["int8"]["median"], kernels["speedup"]
        ]
    summary["vad_pink_5db"] = result["vad"]["pink_5db"]
    summary["eot_after_sentence_ms"] = result["end_of_turn"]["sentence_end_hint"]["max_ms"]
    return summary


def _plot(path: Path, aec: dict[str, dict[str, Any]], result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 8))
    ax = axes[0][0]
    for kind, figures in aec.items():
        series = figures["erle_series"]
        ax.plot(np.arange(len(series)) * WINDOW_S, series, label=kind)
    ax.axvspan(*DOUBLE_TALK, color="orange", alpha=0.2, label="double talk")
    ax.axvspan(13.0, 15.5, color="grey", alpha=0.2, label="user alone")
    ax.set(title=f"ERLE over the call ({SHOWN_DELAY_MS:.0f} ms echo path)", xlabel="s", ylabel="dB")
    ax.legend()
    ax = axes[0][1]
    stages = [s for s in aec["numpy"]["us_per_frame"] if s != "chain"] + ["chain"]
    x = np.arange(len(stages))
    for i, kind in enumerate(AECS):
        med = [aec[kind]["us_per_frame"][s]["agent_talking"]["median"] for s in stages]
        ax.bar(x + i * 0.4, med, 0.4, label=f"{kind} (agent talking)")
    ax.axhline(150.0, color="red", linestyle="--", label="chain target 150 us")
    ax.set_xticks(x + 0.2, stages)
    title = "median us per 10 ms frame"
    if "rnnoise_us_float_vs_int8" in result["summary"]:
        float_us, int8_us, ratio = result["summary"]["rnnoise_us_float_vs_int8"]
        title += f"\nRNNoise float path {float_us:.0f} us -> int8 kernel {int8_us:.0f} us ({ratio}x)"
    ax.set(title=title, ylabel="us")
    ax.legend()
    ax = axes[1][0]
    for kind in ("pink", "white"):
        points = {k: (v["recall"], v["precision"]) for k, v in result["vad"].items() if k.startswith(kind)}
        ax.plot(*zip(*points.values(), strict=True), "o-", label=kind)
        for key, point in points.items():
            ax.annotate(key.split("_")[1], point)
    ax.set(title="VAD precision / recall by SNR", xlabel="recall", ylabel="precision")
    ax.legend()
    ax = axes[1][1]
    eot = result["end_of_turn"]
    ax.bar(list(eot), [v["median_ms"] for v in eot.values()])
    ax.set(title="end of turn after the last word (median)", ylabel="ms")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
