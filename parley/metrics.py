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
FRAMES_UNDECODABLE = Counter("parley_frames_undecodable_total", "Inbound audio packets the decoder rejected (dropped)")
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

# The audio-processing service (`parley dsp-serve`) and the media server's client of it.
DSP_SERVICE_SESSIONS = Gauge("parley_dsp_service_sessions", "DSP sessions open in the audio-processing service")
DSP_SERVICE_CHUNKS = Counter(
    "parley_dsp_service_chunks_total", "Chunks processed by the audio-processing service", ["method"]
)
DSP_SERVICE_CHUNK = Histogram(
    "parley_dsp_service_chunk_seconds",
    "Server time for one chunk (queueing for the session and its DSP)",
    buckets=(1e-4, 2.5e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1),
)
DSP_REMOTE_RTT = Histogram(
    "parley_dsp_remote_rtt_seconds",
    "Media server: time from sending a 10 ms frame to the service until its result is back",
    buckets=(5e-4, 1e-3, 2e-3, 3e-3, 5e-3, 7.5e-3, 1e-2, 2e-2, 3e-2, 5e-2, 0.1),
)
DSP_REMOTE_LATE = Counter(
    "parley_dsp_remote_late_frames_total", "Remote DSP results that missed their slot (the raw frame was used)"
)
DSP_REMOTE_FALLBACKS = Counter(
    "parley_dsp_remote_fallbacks_total", "Calls that lost the audio-processing service and went on in process"
)
WHIP_FAILURES = Counter(
    "parley_whip_failures_total", "WHIP sessions whose media never connected, by stage (ice, dtls, other)", ["stage"]
)
RATE_LIMITED = Counter("parley_rate_limited_total", "Requests refused with 429 by a rate limit", ["kind"])
ADMISSION_REFUSED = Counter("parley_admission_refused_total", "Calls refused before answering", ["reason"])
CALLS_ENDED = Counter("parley_calls_ended_total", "Calls closed, by end reason", ["reason"])
DEPENDENCY_ERRORS = Counter(
    "parley_dependency_errors_total", "Failures talking to a service (postgres, redis, milvus, a backend)",
    ["dependency"],
)
