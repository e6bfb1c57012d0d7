"""Prometheus metrics shared by every layer (one registry per process).

Stage timings are histograms in seconds; buckets are tuned for conversational latency
(tens of ms to a few seconds).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)

CALLS_ACTIVE = Gauge("parley_calls_active", "Calls currently open on this worker", ["transport"])
CALLS_TOTAL = Counter("parley_calls_total", "Calls accepted", ["transport"])
FRAMES_SENT = Counter("parley_frames_sent_total", "Outbound 20 ms audio frames sent")
FRAMES_LATE = Counter("parley_frames_late_total", "Outbound frames sent more than one frame late")
FRAMES_RECEIVED = Counter("parley_frames_received_total", "Inbound audio frames consumed")
LOOP_LAG = Histogram(
    "parley_loop_lag_seconds",
    "How late a 20 ms event-loop tick fires (media loop stall detector)",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
)
STAGE_LATENCY = Histogram(
    "parley_stage_latency_seconds",
    "Per-turn time from end of user speech to each stage milestone",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
DSP_FRAME = Histogram(
    "parley_dsp_frame_seconds",
    "DSP chain time for one inbound 10 ms frame (every 10th frame is observed)",
    buckets=(5e-5, 1e-4, 1.5e-4, 2e-4, 3e-4, 5e-4, 7.5e-4, 1e-3, 2e-3, 5e-3),
)
DSP_RNNOISE_INT8 = Gauge(
    "parley_dsp_rnnoise_int8", "1 when RNNoise runs on the int8 AVX2 kernel, 0 on the wheel's float path"
)
TURNS = Counter("parley_turns_total", "User turns handled", ["persona"])
INTERRUPTIONS = Counter("parley_interruptions_total", "Agent replies cut off by the user (barge-in)")
HTTP_ERRORS = Counter("parley_http_errors_total", "API requests answered with an error", ["code"])
