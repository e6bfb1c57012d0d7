"""Writes infra/grafana/dashboards/parley.json (run after changing a panel; the JSON is committed).

Panels are generated so every query follows one pattern (rates over 5 m, quantiles from
histogram buckets summed over workers) and ``tests/test_infra.py`` can check that each
metric a panel reads is one the code exports.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "dashboards" / "parley.json"
W, H = 8, 8  # three panels a row


def q(expr: str, legend: str = "") -> dict[str, Any]:
    return {"expr": expr, "legendFormat": legend, "datasource": {"type": "prometheus", "uid": "prometheus"}}


def quantiles(metric: str, by: str = "", qs: tuple[float, ...] = (0.5, 0.95)) -> list[dict[str, Any]]:
    group = f"le, {by}" if by else "le"
    label = f"{{{{{by}}}}} " if by else ""
    return [q(f"histogram_quantile({x}, sum by ({group}) (rate({metric}_bucket[5m])))", f"{label}p{int(x * 100)}")
            for x in qs]


def panel(title: str, targets: list[dict[str, Any]], unit: str = "short", kind: str = "timeseries",
          description: str = "") -> dict[str, Any]:
    return {"type": kind, "title": title, "description": description, "targets": targets,
            "datasource": {"type": "prometheus", "uid": "prometheus"},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []}, "options": {}}


ROWS: list[tuple[str, list[dict[str, Any]]]] = [
    ("Calls", [
        panel("Active calls", [q("sum(parley_calls_active)", "calls")], kind="stat",
              description="Summed over every scraped worker; the HPA reads parley_calls_active per pod."),
        panel("Active calls by transport", [q("sum by (transport) (parley_calls_active)", "{{transport}}")]),
        panel("New calls / min", [q("sum by (transport) (rate(parley_calls_total[5m])) * 60", "{{transport}}")]),
        panel("Turns / min by persona", [q("sum by (persona) (rate(parley_turns_total[5m])) * 60", "{{persona}}")]),
        panel("Barge-ins / min", [q("sum(rate(parley_interruptions_total[5m])) * 60", "interruptions")]),
        panel("Inbound frames / s", [q("sum(rate(parley_frames_received_total[5m]))", "received"),
                                     q("sum(rate(parley_frames_sent_total[5m]))", "sent")]),
    ]),
    ("Media loop and DSP", [
        panel("Late outbound frames", [q("sum(rate(parley_frames_late_total[5m])) / "
                                         "clamp_min(sum(rate(parley_frames_sent_total[5m])), 1)", "late share")],
              unit="percentunit", description="Frames sent more than one frame late: the loop is overloaded."),
        panel("Event-loop lag", quantiles("parley_loop_lag_seconds", qs=(0.5, 0.95, 0.99)), unit="s"),
        panel("DSP time per 10 ms frame", quantiles("parley_dsp_frame_seconds"), unit="s"),
        panel("Remote DSP round trip", quantiles("parley_dsp_remote_rtt_seconds"), unit="s",
              description="Only with PARLEY_DSP_URL: send to result, per frame."),
        panel("Remote DSP: late frames and fallbacks", [
            q("sum(rate(parley_dsp_remote_late_frames_total[5m]))", "late frames / s"),
            q("sum(increase(parley_dsp_remote_fallbacks_total[5m]))", "calls fallen back (5 m)")]),
        panel("DSP service: sessions and chunk time", [
            q("sum(parley_dsp_service_sessions)", "sessions"),
            *quantiles("parley_dsp_service_chunk_seconds", qs=(0.95,))]),
    ]),
    ("Latency", [
        panel("Per-stage latency p50", quantiles("parley_stage_latency_seconds", "stage", (0.5,)), unit="s"),
        panel("Per-stage latency p95", quantiles("parley_stage_latency_seconds", "stage", (0.95,)), unit="s"),
        panel("Turn latency (end of speech to first reply frame)", [
            q(f"histogram_quantile({x}, sum by (le) "
              f"(rate(parley_stage_latency_seconds_bucket{{stage=\"first_frame\"}}[5m])))", f"p{int(x * 100)}")
            for x in (0.5, 0.95)], unit="s"),
    ]),
    ("Models, tokens and cost", [
        panel("LLM tokens / s", [q("sum by (direction) (rate(parley_llm_tokens_total[5m]))", "{{direction}}")]),
        panel("Estimated LLM cost / hour", [
            q("sum(rate(parley_llm_tokens_total[1h])) * 3600 / 1e6 * $usd_per_mtok", "USD / h")],
            unit="currencyUSD", description="Tokens x the dashboard's price variable (no cost metric is exported)."),
        panel("Audio seconds processed / s", [q("sum by (stage) (rate(parley_audio_seconds_total[5m]))",
                                                 "{{stage}}")]),
        panel("Daily token budget used", [q("max(parley_budget_used_ratio)", "used")], unit="percentunit"),
    ]),
    ("Errors and fallbacks", [
        panel("HTTP errors / min", [q("sum by (code) (rate(parley_http_errors_total[5m])) * 60", "{{code}}")]),
        panel("Backend errors / min", [q("sum by (stage, kind) (rate(parley_backend_errors_total[5m])) * 60",
                                         "{{stage}} {{kind}}")]),
        panel("Backend fallbacks / min", [q("sum by (stage, kind) (rate(parley_backend_fallbacks_total[5m])) * 60",
                                            "{{stage}} {{kind}}")]),
        panel("Circuit breakers (0 closed, 1 half-open, 2 open)", [q("max by (stage) (parley_circuit_state)",
                                                                     "{{stage}}")]),
        panel("Moderation flags / min", [q("sum by (stage, source) (rate(parley_moderation_flags_total[5m])) * 60",
                                           "{{stage}} {{source}}")]),
        panel("Turns refused by budget / min", [q("sum by (scope) (rate(parley_budget_denied_total[5m])) * 60",
                                                  "{{scope}}")]),
    ]),
]


def dashboard() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y, next_id = 0, 1
    for title, row in ROWS:
        panels.append({"type": "row", "title": title, "id": next_id, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        next_id, y = next_id + 1, y + 1
        for i, p in enumerate(row):
            p = {**p, "id": next_id, "gridPos": {"h": H, "w": W, "x": (i % 3) * W, "y": y + (i // 3) * H}}
            panels.append(p)
            next_id += 1
        y += ((len(row) + 2) // 3) * H
    return {
        "uid": "parley-overview", "title": "Parley", "tags": ["parley"], "schemaVersion": 39, "version": 1,
        "editable": False, "time": {"from": "now-3h", "to": "now"}, "refresh": "30s",
        "templating": {"list": [{"name": "usd_per_mtok", "label": "USD per 1M tokens", "type": "textbox",
                                 "query": "0.6", "current": {"text": "0.6", "value": "0.6"}}]},
        "annotations": {"list": []}, "panels": panels,
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(dashboard(), indent=1) + "\n")
    print(f"wrote {OUT}")
