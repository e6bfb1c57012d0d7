"""baresip, a real SIP user agent, calls a persona with a WAV as its microphone.

baresip's ``aufile`` module is the microphone and its ``sndfile`` module records what it
receives (``dump-*-dec.wav``); the recording is transcribed with the project's own local
Whisper backend and must say what the persona said.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from media_server.sip.call import SipCall
from parley.config import Settings
from pipeline.audio import RATE, resample, rms_dbfs
from pipeline.backends import registry
from pipeline.services import FILLER_TEXT
from tests.conftest import espeak, write_wav
from tests.sip.conftest import SipNode, free_port

pytestmark = pytest.mark.asyncio(loop_scope="package")

SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."


def baresip_config(home: Path, wav: Path, records: Path, answer: bool = False) -> Path:
    """A baresip home: no sound card (aufile in, aubridge out), G.711 only, no registration."""
    home.mkdir(parents=True, exist_ok=True)
    rtp = free_port(both=False) & ~1
    records.mkdir(parents=True, exist_ok=True)
    (home / "config").write_text("\n".join([
        f"sip_listen 127.0.0.1:{free_port()}",
        f"audio_source aufile,{wav}",
        "audio_player aubridge,parley",
        "audio_alert aubridge,parley",
        "audio_srate 8000",
        "audio_channels 1",
        f"rtp_ports {rtp}-{rtp + 1}",
        "module_path /usr/lib/baresip/modules",
        "module g711.so",
        "module aufile.so",
        "module aubridge.so",
        "module sndfile.so",
        "module_app account.so",
        "module_app menu.so",
        f"snd_path {records}",
        "",
    ]))
    mode = ";answermode=auto" if answer else ""
    (home / "accounts").write_text(f"<sip:tester@127.0.0.1>;regint=0;audio_codecs=PCMU{mode}\n")
    (home / "contacts").write_text("")
    return home


async def start_baresip(home: Path, uri: str) -> asyncio.subprocess.Process:
    """baresip dialling ``uri`` (it quits by itself after 90 s at the latest)."""
    if shutil.which("baresip") is None:
        pytest.fail("baresip is not installed (infra/system-deps.sh installs it)")
    return await asyncio.create_subprocess_exec(
        "baresip", "-f", str(home), "-e", f"/dial {uri}", "-t", "90",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )


async def answering_baresip(tmp_path: Path, text: str) -> tuple[asyncio.subprocess.Process, str]:
    """baresip answering every call, saying ``text`` (espeak, after 0.5 s) and recording what
    it hears into ``tmp_path/records``; returns it and its SIP ``host:port`` (quits after 60 s)."""
    pcm = np.concatenate([np.zeros(RATE // 2, np.int16), espeak(text, speed=140), np.zeros(RATE * 30, np.int16)])
    home = baresip_config(tmp_path / "baresip", write_wav(tmp_path / "mic.wav", resample(pcm, RATE, 8000), 8000),
                          tmp_path / "records", answer=True)
    listen = (home / "config").read_text().split("sip_listen ")[1].split("\n")[0]
    proc = await asyncio.create_subprocess_exec(
        "baresip", "-f", str(home), "-t", "60", stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    return proc, listen


async def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2"), w.getframerate()


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def share(of: str, within: str) -> float:
    """Share of the words of ``of`` that occur in ``within``."""
    wanted, got = words(of), set(words(within))
    return sum(w in got for w in wanted) / max(1, len(wanted))


async def call_persona(node: SipNode, tmp_path: Path, persona: str, text: str, reply_timeout: float) -> CallRecord:
    """baresip says ``text`` (espeak, 8 kHz WAV) to ``persona`` and records the reply; the
    server hangs up (BYE) once the reply has been spoken."""
    speech48 = espeak(text, speed=140)
    pcm = np.concatenate([np.zeros(RATE // 2, np.int16), speech48, np.zeros(RATE * 60, np.int16)])
    mic = write_wav(tmp_path / "mic.wav", resample(pcm, RATE, 8000), 8000)
    home = baresip_config(tmp_path / "baresip", mic, tmp_path / "records")
    known = set(node.sip.by_call)
    proc = await start_baresip(home, f"sip:{persona}@127.0.0.1:{node.sip.port}")
    try:
        await wait_for(lambda: set(node.sip.by_call) - known, 10, "the call")
        call = node.sip.by_call[(set(node.sip.by_call) - known).pop()].call
        try:
            await wait_for(lambda: call.event_history.of_type("tts-end"), reply_timeout, "the end of the reply")
        except AssertionError as exc:
            t0 = call.started
            events = [(round(t - t0, 1), e.get("type"), str(e.get("state", e.get("text", "")))[:40])
                      for t, e in call.event_history.history if e.get("type") != "llm-token"]
            raise AssertionError(f"{exc}: {events}") from None
        await call.close("test done")  # BYE: baresip ends the call and closes its recording
        await asyncio.sleep(0.5)
    finally:
        proc.terminate()
        out, _ = await proc.communicate()
    output = out.decode(errors="replace")
    assert "terminated" in output, output[-2000:]
    dumps = sorted((tmp_path / "records").glob("*-dec.wav"))
    assert dumps, output[-2000:]
    reply, rate = read_wav(dumps[-1])
    stt = registry.get("stt", "local", Settings(stt="local"))
    heard = await stt.transcribe(resample(reply, rate, RATE))
    played = resample(speech48, RATE, rate)
    said = await stt.transcribe(resample(played, rate, RATE))
    return CallRecord(call, heard, said, rms_dbfs(reply), output, envelope_match(played, reply, rate))


@dataclass
class CallRecord:
    call: SipCall
    heard: str  # transcript of what baresip recorded
    said: str  # transcript of what baresip played (narrowband espeak is not perfectly clear)
    level_db: float
    output: str
    envelope_r: float  # how closely the recording's loudness follows what baresip said


def envelope_match(said: np.ndarray, recorded: np.ndarray, rate: int) -> float:
    """Best correlation of the 20 ms log-energy envelopes of ``said`` (its voiced span) and
    ``recorded``, over every place ``said`` could sit in ``recorded`` (even running past its
    end, where the hang-up cut it): an echo of the words scores ~0.8 whatever the codec did
    to them; silence, noise or other words score low."""
    def envelope(pcm: np.ndarray) -> np.ndarray:
        frame = rate // 50
        frames = pcm[: len(pcm) // frame * frame].astype(np.float64).reshape(-1, frame)
        return np.log10(np.mean(frames**2, axis=1) + 1.0)
    a, b = envelope(said), envelope(recorded)
    voiced = np.flatnonzero(a > a.max() - 3.0)  # within 30 dB of the loudest frame
    a = a[voiced[0]: voiced[-1] + 1]
    b = np.concatenate([b, np.full(len(a), b.min())])
    a = (a - a.mean()) / (a.std() + 1e-9)
    windows = np.lib.stride_tricks.sliding_window_view(b, len(a))
    z = (windows - windows.mean(axis=1, keepdims=True)) / (windows.std(axis=1, keepdims=True) + 1e-9)
    return float((z @ a).max() / len(a))


async def test_baresip_calls_the_echo_persona_and_hears_itself(sip_node: SipNode, tmp_path: Path) -> None:
    rec = await call_persona(sip_node, tmp_path, "echo", SENTENCE, reply_timeout=30)
    history = rec.call.event_history
    assert history.of_type("tts-end"), ([e for _, e in history.history], rec.output[-2000:])
    assert rec.level_db > -50, "the recorded reply is silent"
    print(f"echo over SIP: said {rec.said!r}, heard back {rec.heard!r}, envelope r={rec.envelope_r:.2f}")
    # the words came back: the recording's loudness follows the sentence syllable by syllable
    assert rec.envelope_r >= 0.6, rec.envelope_r
    # and still sound like them (Whisper tiny on narrowband espeak, G.711 both ways, varies
    # by a few words from run to run: "quick brown fox" came back "weak round rock")
    assert share(rec.said, rec.heard) >= 0.5, (rec.said, rec.heard)


@pytest.mark.models
@pytest.mark.skipif(not os.environ.get("PARLEY_TEST_SLOW"),
                    reason="~90 s on a busy 2-core machine (STT + LLM + TTS): set PARLEY_TEST_SLOW=1")
async def test_baresip_talks_with_socrates(sip_node: SipNode, tmp_path: Path) -> None:
    rec = await call_persona(sip_node, tmp_path, "socrates", "What is the meaning of a good life?", reply_timeout=90)
    replies = [e["text"] for _, e in rec.call.event_history.of_type("llm-done")]
    print(f"socrates over SIP: said {replies[0]!r}; baresip heard {rec.heard!r}")
    assert rec.level_db > -50 and words(rec.heard), "the reply did not reach baresip"
    # what baresip heard is the reply (and perhaps the dead-air filler), nothing else
    assert share(rec.heard, replies[0] + " " + FILLER_TEXT) >= 0.5, (replies[0], rec.heard)


async def test_dial_out_to_baresip(sip_node: SipNode, tmp_path: Path) -> None:
    proc, listen = await answering_baresip(tmp_path, SENTENCE)
    try:
        await asyncio.sleep(1.0)  # baresip binds its SIP port
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{sip_node.url}/api/sip/calls", json={"to": "sip:x@127.0.0.1"}) as r:
                assert r.status == 401  # dialling out needs a session
            async with http.post(f"{sip_node.url}/api/sessions", json={"persona": "echo"}) as r:
                token = (await r.json())["token"]
            request = {"to": f"sip:tester@{listen}", "persona": "echo"}
            async with http.post(f"{sip_node.url}/api/sip/calls", json=request,
                                 headers={"Authorization": f"Bearer {token}"}) as r:
                body = await r.json()
                assert r.status == 201, body
        call = sip_node.sip.by_call[body["call_id"]].call
        await wait_for(lambda: call.event_history.of_type("tts-end"), 30, "the echo of baresip's speech")
        assert call.leg.packets_in > 100 and call.leg.payload_type == 0
        assert call.agent.send_dtmf is not None
        call.agent.send_dtmf("42#")  # the agent keys digits (RFC 4733) to the phone
        await asyncio.sleep(1.2)
        await call.close("test done")
        await asyncio.sleep(0.5)
    finally:
        proc.terminate()
        out, _ = await proc.communicate()
    output = out.decode(errors="replace")
    assert "terminated" in output, output[-2000:]
    assert re.findall(r"received event: '(.)' \(end=0\)", output) == ["4", "2", "#"], output[-2000:]
