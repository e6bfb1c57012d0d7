"""The web page in real headless Chromium against a real ``parley serve`` (echo persona;
one test talks to an AI persona on the local models).

The fake microphone plays speech made at test time (espeak-ng + sox); the page measures
the agent's audio it receives with a WebAudio analyser (``window.parley.stats.rxEnergy``),
since headless Chromium reports no inbound audio energy through getStats().
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from bench.serverproc import free_port, scrape
from pipeline.audio import RATE, write_wav
from tests.browser import CHROMIUM, energy_by_state, make_speech_wav, open_page

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason=f"headless Chromium not found at {CHROMIUM}"
    ),
    pytest.mark.timeout(120),
]

REPO = Path(__file__).resolve().parent.parent
PARLEY = REPO / ".venv" / "bin" / "parley"
SENTENCE = "Hello there. This is a test of the echo persona."
START_TIMEOUT_S = 60.0

# A walk through the call states, in order (other states may come in between).
ECHO_WALK = ["connecting", "listening", "speaking", "listening"]
# True once the page went listening -> speaking -> listening.
ECHOED_JS = """(() => {
  const s = window.parley.transitions.map((x) => x.state);
  const heard = s.indexOf('listening');
  const spoke = s.indexOf('speaking', heard + 1);
  return heard >= 0 && spoke > heard && s.indexOf('listening', spoke + 1) > spoke;
})()"""


class ParleyServer:
    """``parley serve`` in a subprocess (its own process group), echo persona by default."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PARLEY_DATA_DIR": str(self.data_dir), "PARLEY_PERSONA": "echo"}
        command = [str(PARLEY), "serve", "--port", str(self.port), "--host", "127.0.0.1"]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                raise RuntimeError(f"parley serve exited ({code}):\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"parley serve not healthy within {timeout} s:\n{self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Signals the server's process group, then kills it if it outstays ``timeout``."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


FRAME_COUNTERS = ("parley_frames_sent_total", "parley_frames_late_total")


@pytest.fixture(scope="module")
def parley_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ParleyServer]:
    if not PARLEY.exists():
        pytest.fail(f"{PARLEY} is missing: run `make setup`")
    server = ParleyServer(tmp_path_factory.mktemp("parley-data"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1 s silence, the sentence (~3 s), 4 s silence: 48 kHz 16-bit mono."""
    return make_speech_wav(tmp_path_factory.mktemp("wav") / "speech.wav", SENTENCE)


@pytest.fixture
def silence_wav(tmp_path: Path) -> Path:
    """A quiet microphone (Chromium's fake device beeps when given no file)."""
    path = tmp_path / "silence.wav"
    write_wav(path, np.zeros(60 * RATE, np.int16))
    return path


async def active_calls(url: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(url + "/health") as response:
        return int((await response.json())["calls"])


def is_walk(expected: list[str], states: list[str]) -> bool:
    """Whether ``expected`` occurs in ``states`` in order (not necessarily adjacent)."""
    remaining = iter(states)
    return all(state in remaining for state in expected)


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[int(0.95 * (len(ordered) - 1))] if ordered else 0.0


async def test_page_loads_with_personas_and_no_console_errors(parley_server: ParleyServer) -> None:
    async with open_page(parley_server.url + "/") as page:
        await page.wait_for("window.parley && window.parley.ready", timeout=10)
        options = await page.evaluate(
            "[...document.querySelectorAll('#persona option')].map((o) => o.value)"
        )
        state = await page.state()
        mic_enabled = await page.evaluate("!document.getElementById('mic').disabled")
        await asyncio.sleep(0.3)  # late console messages (failed loads) come in asynchronously
        errors = [entry.text for entry in page.console_errors()]
    assert "echo" in options
    assert state == "idle"
    assert mic_enabled
    assert errors == []


@pytest.mark.parametrize("transport", ["webrtc", "ws"])
async def test_echo_call_walks_states_and_plays_audio(
    parley_server: ParleyServer, speech_wav: Path, transport: str
) -> None:
    query = "persona=echo&autostart=1" + ("&transport=ws" if transport == "ws" else "")
    frames_before = scrape(parley_server.url, FRAME_COUNTERS)
    async with open_page(f"{parley_server.url}/?{query}", fake_mic=speech_wav) as page:
        await page.wait_for(ECHOED_JS, timeout=30)
        await asyncio.sleep(0.3)  # the last samples of the reply's tail
        parley: dict[str, Any] = await page.parley()
        assert await active_calls(parley_server.url) >= 1
        await page.evaluate("document.getElementById('mic').click()")
        await page.wait_for("document.body.dataset.state === 'idle'", timeout=5)
        errors = [entry.text for entry in page.console_errors()]

    states = [item["state"] for item in parley["transitions"]]
    assert parley["transport"] == transport
    assert is_walk(ECHO_WALK, states), states
    assert parley["errors"] == []
    assert errors == []

    # Received audio: silent while listening, clearly voiced while the agent speaks.
    timeline = parley["stats"]["rxEnergy"]
    first_speaking = next(i for i, s in enumerate(timeline) if s["state"] == "speaking")
    before = [s["rms"] for s in timeline[:first_speaking] if s["state"] == "listening"]
    floor = max(p95(before), 1e-4)
    speaking = [s["rms"] for s in timeline if s["state"] == "speaking"]
    threshold = max(0.02, 10 * floor)
    voiced = [rms for rms in speaking if rms > threshold]
    summary = energy_by_state(timeline)
    assert max(speaking) > threshold, summary
    assert len(voiced) * 0.05 >= 0.5, f"under 0.5 s of voiced reply: {summary}"

    if transport == "ws":
        tts = parley["stats"]["tts"]
        assert tts["chunks"] > 0 and tts["seconds"] >= 1.0, tts
        assert tts["peakRms"] > 0.02, tts

    frames = {k: v - frames_before[k] for k, v in scrape(parley_server.url, FRAME_COUNTERS).items()}
    print(f"browser {transport} call: server sent {frames[FRAME_COUNTERS[0]]:.0f} frames, "
          f"{frames[FRAME_COUNTERS[1]]:.0f} late")

    # Hanging up must end the call on the server too, not leave it to time out.
    # (The server has no event to wait on from here, so poll /health for up to 10 s.)
    for _ in range(50):
        if await active_calls(parley_server.url) == 0:
            break
        await asyncio.sleep(0.2)
    assert await active_calls(parley_server.url) == 0


@pytest.mark.parametrize("transport", ["webrtc", "ws"])
async def test_interrupt_button_silences_the_reply(
    parley_server: ParleyServer, speech_wav: Path, transport: str
) -> None:
    query = "persona=echo&autostart=1" + ("&transport=ws" if transport == "ws" else "")
    async with open_page(f"{parley_server.url}/?{query}", fake_mic=speech_wav) as page:
        await page.wait_for("document.body.dataset.state === 'speaking'", timeout=30)
        await asyncio.sleep(0.6)  # well into the ~3 s reply
        clicked_at = await page.evaluate(
            "document.getElementById('interrupt').click(), performance.now()"
        )
        await page.wait_for(
            "window.parley.events.some((e) => e.type === 'interrupted')"
            " && document.body.dataset.state === 'listening'",
            timeout=5,
        )
        await asyncio.sleep(1.0)
        parley = await page.parley()
    sent = [e["type"] for e in parley["events"] if e["dir"] == "out"]
    assert "interrupt" in sent
    timeline = parley["stats"]["rxEnergy"]
    before = [s["rms"] for s in timeline if clicked_at - 500 <= s["t"] < clicked_at]
    after = [s["rms"] for s in timeline if clicked_at + 400 <= s["t"] <= clicked_at + 1000]
    assert max(before) > 0.02, "the reply was not audible before the interrupt"
    assert after and max(after) < 0.01, f"still audible after the interrupt: {max(after):.3f}"


TYPED = "Who are you, and what do you teach?"
TRANSCRIPT_ITEMS_JS = "[...document.querySelectorAll('#transcript li')].map((li) => li.textContent)"


@pytest.mark.models
@pytest.mark.timeout(180)
async def test_typed_message_to_an_ai_persona_shows_once(
    parley_server: ParleyServer, silence_wav: Path
) -> None:
    """The server's ``stt-final`` is the one owner of #transcript: a typed message appears
    once (not also as a local echo), and the local models' reply lands in #reply."""
    url = f"{parley_server.url}/?persona=socrates&autostart=1"
    async with open_page(url, fake_mic=silence_wav) as page:
        await page.wait_for("document.body.dataset.state === 'listening'", timeout=30)
        await page.evaluate(
            f"""(() => {{
              document.getElementById('text-input').value = {TYPED!r};
              document.getElementById('text-form').requestSubmit();
            }})()"""
        )
        await page.wait_for(
            "window.parley.events.some((e) => e.type === 'llm-done')"
            " && document.getElementById('reply').textContent.trim().length > 0",
            timeout=90,
        )
        await asyncio.sleep(0.5)  # a late duplicate would have arrived by now
        transcript = await page.evaluate(TRANSCRIPT_ITEMS_JS)
        typed_class = await page.evaluate(
            "[...document.querySelectorAll('#transcript li.typed')].length"
        )
        reply = await page.evaluate("document.getElementById('reply').textContent")
        parley = await page.parley()
        errors = [entry.text for entry in page.console_errors()]
    assert transcript == [TYPED], transcript
    assert typed_class == 1
    done = next(e for e in parley["events"] if e["type"] == "llm-done")
    assert done["text"] and done["text"] in reply
    assert parley["errors"] == []
    assert errors == []


async def test_falls_back_to_websocket_when_webrtc_stalls(
    parley_server: ParleyServer, silence_wav: Path
) -> None:
    async with open_page(f"{parley_server.url}/?persona=echo", fake_mic=silence_wav) as page:
        # The offer never gets an answer, as when a middlebox eats it: WebRTC cannot connect.
        await page.stall_requests("*/api/offer")
        await page.wait_for("window.parley.ready", timeout=10)
        await page.evaluate("document.getElementById('mic').click()")
        await page.wait_for("window.parley.transport === 'ws'", timeout=20)
        # The typed-message path, over the fallback: the echo persona answers with the text.
        await page.evaluate(
            """(() => {
              document.getElementById('text-input').value = 'Fallback check';
              document.getElementById('text-form').requestSubmit();
            })()"""
        )
        await page.wait_for(
            "document.getElementById('reply').textContent.includes('Fallback check')", timeout=10
        )
        parley = await page.parley()
        transcript = await page.evaluate("document.getElementById('transcript').textContent")
        stalled = list(page.stalled)
    assert any(url.endswith("/api/offer") for url in stalled)
    assert any("WebSocket fallback" in n["message"] for n in parley["notices"])
    assert parley["errors"] == []
    assert "Fallback check" in transcript
    fallback_at = next(x["t"] for x in parley["transitions"] if x["state"] == "listening")
    started_at = next(x["t"] for x in parley["transitions"] if x["state"] == "connecting")
    assert 7.5 <= (fallback_at - started_at) / 1000 <= 12, "fallback should come after ~8 s"


@pytest.mark.timeout(240)
async def test_reconnects_after_server_loss_then_gives_up(
    tmp_path: Path, silence_wav: Path
) -> None:
    server = ParleyServer(tmp_path / "data")
    await asyncio.to_thread(server.start)
    url = f"{server.url}/?persona=echo&autostart=1"
    try:
        async with open_page(url, fake_mic=silence_wav) as page:
            await page.wait_for("window.parley.transport", timeout=15)
            mark = await page.evaluate("window.parley.transitions.length")

            # A server that vanishes without a word: only the missed pongs reveal it.
            await asyncio.to_thread(server.stop, signal.SIGKILL)
            await page.wait_for("document.body.dataset.state === 'connecting'", timeout=15)
            await asyncio.to_thread(server.start)
            await page.wait_for(
                f"window.parley.transitions.slice({mark}).some((x) => x.state === 'listening')"
                " && window.parley.transport",
                timeout=45,
            )
            notices = [n["message"] for n in (await page.parley())["notices"]]
            assert "Reconnected." in notices

            # Gone for good: five tries over 30 s, then idle and an error banner.
            await asyncio.to_thread(server.stop, signal.SIGKILL)
            await page.wait_for("document.body.dataset.state === 'idle'", timeout=75)
            parley = await page.parley()
            banner = await page.evaluate(
                "document.getElementById('error').hidden ? '' : "
                "document.getElementById('error-text').textContent"
            )
    finally:
        await asyncio.to_thread(server.stop)
    assert "reconnection attempts failed" in parley["errors"][-1]["message"]
    assert "reconnection attempts failed" in banner
