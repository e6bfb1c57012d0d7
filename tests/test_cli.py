"""The CLI as a user runs it: ``parley serve`` in a process, ``parley call --json`` against it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from bench.serverproc import free_port, wait_healthy
from tests.conftest import write_wav

PARLEY = [sys.executable, "-m", "parley"]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "PARLEY_DATA_DIR": str(tmp_path / "data"), "PARLEY_PERSONA": "echo"}
    proc = subprocess.Popen([*PARLEY, "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, timeout=60)
        yield url
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0, "serve did not exit cleanly on SIGTERM"
        secret = tmp_path / "data" / "secret.key"
        assert secret.stat().st_mode & 0o777 == 0o600


def test_call_prints_contract_json(served: str, tmp_path: Path, speech: Callable[..., np.ndarray]) -> None:
    wav = write_wav(tmp_path / "in.wav", speech("Hello there, can you hear me clearly?"))
    out = tmp_path / "reply.wav"
    run = subprocess.run([*PARLEY, "call", "--url", served, "--wav", str(wav), "--persona", "echo",
                          "--out", str(out), "--json"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert set(result) == {"transcript", "reply_text", "reply_audio_s", "latency_ms", "frames",
                           "turn_ends", "interruptions", "premature_replies"}
    assert len(result["turn_ends"]) >= 1 and result["premature_replies"] == 0
    assert set(result["latency_ms"]) == {"turn", "stt", "llm_first_token", "tts_first_audio"}
    assert result["reply_audio_s"] > 1.0
    assert 0 < result["latency_ms"]["turn"] < 3000
    assert result["frames"]["received"] > 50
    assert out.stat().st_size > 48000 * 2


def test_call_reports_bad_input_clearly(served: str, tmp_path: Path) -> None:
    missing = subprocess.run([*PARLEY, "call", "--url", served, "--wav", str(tmp_path / "no.wav")],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "no such file" in missing.stderr
    bad_persona = subprocess.run(
        [*PARLEY, "call", "--url", served, "--wav", str(write_wav(tmp_path / "s.wav", np.zeros(4800, np.int16))),
         "--persona", "nobody"], capture_output=True, text=True, timeout=60)
    assert bad_persona.returncode == 2 and "unknown_persona" in bad_persona.stderr


def test_personas_and_doctor_commands() -> None:
    listing = subprocess.run([*PARLEY, "personas"], capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0 and "socrates" in listing.stdout and "echo" in listing.stdout
    doctor = subprocess.run([*PARLEY, "doctor"], capture_output=True, text=True, timeout=60)
    assert "backends: stt=" in doctor.stdout and doctor.returncode == 0, doctor.stdout
