"""Call recording: only with consent, both directions aligned, to a folder or a real S3 server,
listed in the export, downloadable with an export token, and gone with the user."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import subprocess
import sys
import wave
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import boto3
import numpy as np
import pytest
from aiohttp import web

from bench.serverproc import free_port
from media_server.recording import CHUNK_S, STALL_S, Recorder, RecordingFile
from parley.call.client import CallClient
from parley.config import Settings
from pipeline.audio import FRAME_10MS, FRAME_20MS, RATE, rms_dbfs
from signaling.keys import CALLS, RECORDINGS, STORE
from tests.conftest import start_server

SENTENCE = "Please record what I am saying now."
BUCKET = "parley-recordings"


# -- the recorder on its own: frames in, a stereo WAV out --------------------------------------

def _tone(seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (np.sin(2 * np.pi * hz * t) * 8000).astype(np.int16)


def _loud_spans(channel: np.ndarray, threshold: float = -40.0) -> list[tuple[float, float]]:
    """(start, end) seconds of the runs of 10 ms frames louder than ``threshold`` dBFS."""
    frames = channel[: channel.size - channel.size % FRAME_10MS].reshape(-1, FRAME_10MS)
    loud = [rms_dbfs(f) > threshold for f in frames]
    spans, start = [], None
    for i, on in enumerate([*loud, False]):
        if on and start is None:
            start = i
        elif not on and start is not None:
            spans.append((start * 0.01, i * 0.01))
            start = None
    return spans


def _read_wav(data: bytes) -> tuple[wave._wave_params, np.ndarray]:
    with wave.open(io.BytesIO(data)) as w:
        params = w.getparams()
        pcm = np.frombuffer(w.readframes(params.nframes), np.int16).reshape(-1, params.nchannels)
    return params, pcm


async def test_recorder_keeps_both_sides_on_one_timeline_padding_gaps_and_stalls(tmp_path: Path) -> None:
    """Caller: a tone for 1 s, 0.5 s with no packets, a tone for 0.5 s, then nothing (a stalled
    side). Agent: 20 ms frames for 6 s with a tone from 3 s to 4 s. Each sound must land where
    it happened, and a stalled side must not make the other pile up in memory."""
    finished: list[RecordingFile | None] = []
    recorder = Recorder(tmp_path / "spool" / "r.wav", finished.append)
    t0 = 5000.0
    caller = _tone(1.0, 440)
    caller_frames = [(t0 + i * 0.01, caller[i * FRAME_10MS:(i + 1) * FRAME_10MS]) for i in range(100)]
    caller_frames += [(t0 + 1.5 + i * 0.01, caller[i * FRAME_10MS:(i + 1) * FRAME_10MS]) for i in range(50)]
    agent_tone = _tone(1.0, 660)
    agent_frames = []
    for i in range(300):
        t = i * 0.02
        pcm = agent_tone[(i - 150) * FRAME_20MS:(i - 149) * FRAME_20MS] if 150 <= i < 200 \
            else np.zeros(FRAME_20MS, np.int16)
        agent_frames.append((t0 + t, pcm))
    most_buffered = 0
    for t, side, pcm in sorted([(t, 0, p) for t, p in caller_frames] + [(t, 1, p) for t, p in agent_frames],
                               key=lambda e: (e[0], e[1])):
        if side == 0:
            recorder.inbound([pcm], t)
        else:
            recorder.outbound(pcm, t)
        most_buffered = max(most_buffered, *(lane.buffered for lane in recorder._lanes))
        await asyncio.sleep(0)  # let the writer run, as the event loop would between packets
    await recorder.finish()

    assert most_buffered <= (CHUNK_S + STALL_S) * RATE + FRAME_20MS  # bounded, though the caller stalled
    (done,) = finished
    assert done is not None and done.channels == ("caller", "agent") and done.sample_rate == RATE
    assert done.duration_s == pytest.approx(6.0, abs=0.05)
    params, pcm = _read_wav(done.path.read_bytes())
    assert (params.nchannels, params.framerate, params.sampwidth) == (2, RATE, 2)
    assert done.bytes == done.path.stat().st_size
    left, right = _loud_spans(pcm[:, 0]), _loud_spans(pcm[:, 1])
    assert [(round(a, 1), round(b, 1)) for a, b in left] == [(0.0, 1.0), (1.5, 2.0)]
    assert [(round(a, 1), round(b, 1)) for a, b in right] == [(3.0, 4.0)]


async def test_a_recording_that_cannot_be_written_is_dropped_and_not_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "spool").write_text("a file where the folder should be")
    finished: list[RecordingFile | None] = []
    recorder = Recorder(tmp_path / "spool" / "r.wav", finished.append, "call test recording")
    for i in range(int(3 * CHUNK_S / 0.02)):  # several chunks' worth both ways
        recorder.outbound(np.full(FRAME_20MS, 1000, np.int16), 100.0 + i * 0.02)
        recorder.inbound([np.full(FRAME_10MS, 1000, np.int16)] * 2, 100.0 + i * 0.02)
        await asyncio.sleep(0)
    await recorder.finish()
    assert finished == [None]  # told that nothing was kept
    assert not (tmp_path / "spool").is_dir()
    assert any("call test recording: writing" in r.getMessage() for r in caplog.records)


# -- real calls ---------------------------------------------------------------------------------

async def _say_and_hang_up(url: str, pcm: np.ndarray, *, record: bool) -> dict:
    """One echo call that says ``pcm`` and hears it back; returns the session."""
    async with CallClient(url, "echo", record=record) as client:
        assert client.recording is record
        playback = client.say(pcm)
        await playback.done
        await client.wait_event(lambda e: e["type"] == "tts-end", timeout=20)
        return client.session


async def _calls_stored(app: web.Application) -> None:
    """Wait (bounded) until the server has closed its calls and stored their recordings."""
    for _ in range(150):
        if not app[CALLS].calls:
            break
        await asyncio.sleep(0.1)
    assert not app[CALLS].calls, "the server did not notice the hang-up"
    assert await app[RECORDINGS].idle(15.0)


async def _export_headers(http: aiohttp.ClientSession, url: str, session: dict) -> dict[str, str]:
    async with http.post(f"{url}/api/users/{session['user_id']}/export-token",
                         headers={"Authorization": f"Bearer {session['token']}"}) as r:
        assert r.status == 201
        return {"Authorization": f"Bearer {(await r.json())['token']}"}


async def _exported_recording(http: aiohttp.ClientSession, url: str, session: dict) -> tuple[dict, bytes]:
    """The one recording in the user's export, and its downloaded bytes."""
    headers = await _export_headers(http, url, session)
    async with http.get(f"{url}/api/users/{session['user_id']}/export", headers=headers) as r:
        assert r.status == 200
        (entry,) = (await r.json())["recordings"]
    async with http.get(f"{url}{entry['download']}",  # the session token is not enough here either
                        headers={"Authorization": f"Bearer {session['token']}"}) as r:
        assert r.status == 401 and (await r.json())["error"]["code"] == "export_token_required"
    async with http.get(f"{url}{entry['download']}", headers=headers) as r:
        assert r.status == 200 and r.content_type == "audio/wav"
        return entry, await r.read()


def _check_both_directions(entry: dict, data: bytes, said: np.ndarray) -> None:
    """Left has the caller's speech, right the agent's echo of it, after it."""
    assert entry["channels"] == ["caller", "agent"] and entry["format"] == "wav"
    assert entry["bytes"] == len(data)
    params, pcm = _read_wav(data)
    assert (params.nchannels, params.framerate) == (2, RATE)
    assert entry["duration_s"] == pytest.approx(params.nframes / RATE, abs=0.01)
    said_span = _loud_spans(said)
    spoken = said_span[-1][1] - said_span[0][0]
    left, right = _loud_spans(pcm[:, 0]), _loud_spans(pcm[:, 1])
    assert left and right, "a direction is missing"
    assert left[-1][1] - left[0][0] == pytest.approx(spoken, rel=0.25)
    assert right[-1][1] - right[0][0] == pytest.approx(spoken, rel=0.25)
    assert right[0][0] > left[-1][1] - 0.1, "the echo must come after the caller spoke"


async def test_a_consenting_call_is_recorded_exported_and_deleted_with_the_user(
    server: tuple[web.AppRunner, str], speech: Callable[..., np.ndarray], settings: Settings
) -> None:
    runner, url = server
    said = speech(SENTENCE)
    session = await _say_and_hang_up(url, said, record=True)
    await _calls_stored(runner.app)
    folder = settings.data_path / "recordings"
    async with aiohttp.ClientSession() as http:
        entry, data = await _exported_recording(http, url, session)
        _check_both_directions(entry, data, said)
        stored = Path(entry["stored_at"])
        assert stored.is_relative_to(folder / session["user_id"])
        assert await asyncio.to_thread(stored.read_bytes) == data
        spool = folder / "spool" / session["user_id"]
        assert not await asyncio.to_thread(lambda: list(spool.iterdir())), "the spooled file was moved, not copied"
        # what a worker that died mid-call would have left behind, unlisted
        leftover = spool / "0123456789abcdef0123456789abcdef.wav"
        await asyncio.to_thread(leftover.write_bytes, data)

        async with http.delete(f"{url}/api/users/{session['user_id']}",
                               headers={"Authorization": f"Bearer {session['token']}"}) as r:
            assert r.status == 204
    assert not await asyncio.to_thread(stored.exists)
    assert not await asyncio.to_thread(leftover.exists)
    assert await runner.app[STORE].pool.fetchval("SELECT count(*) FROM recordings") == 0


async def test_without_consent_nothing_is_recorded(
    server: tuple[web.AppRunner, str], speech: Callable[..., np.ndarray], settings: Settings
) -> None:
    runner, url = server
    session = await _say_and_hang_up(url, speech(SENTENCE), record=False)
    await _calls_stored(runner.app)
    assert await runner.app[STORE].pool.fetchval("SELECT count(*) FROM recordings") == 0
    folder = settings.data_path / "recordings"
    assert not folder.exists() or not [p for p in folder.rglob("*") if p.is_file()]
    async with aiohttp.ClientSession() as http:
        headers = await _export_headers(http, url, session)
        async with http.get(f"{url}/api/users/{session['user_id']}/export", headers=headers) as r:
            assert (await r.json())["recordings"] == []


@pytest.mark.parametrize(("extra", "code"), [({"record": "yes"}, "bad_record"), ({"record": 1}, "bad_record"),
                                             ({"record": None, "room_id": "r1"}, "bad_record")])
async def test_consent_must_be_a_plain_boolean(url: str, extra: dict, code: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/api/offer", json={"sdp": "v=0", "type": "offer", **extra}) as r:
            assert r.status == 400 and (await r.json())["error"]["code"] == code


# -- an S3-compatible store: moto's server, on loopback ----------------------------------------

@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A real S3-compatible HTTP server (moto) on a free loopback port, for this module."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    try:
        for line in proc.stderr:  # werkzeug says when it listens
            if "Running on" in line:
                break
        else:
            pytest.fail(f"moto server exited with {proc.wait()}")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stderr.close()


@pytest.fixture
async def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[object]:
    """An empty bucket and a client on it; the AWS_* variables the server's sink reads too."""
    for name, value in (("AWS_ACCESS_KEY_ID", "parley-test"), ("AWS_SECRET_ACCESS_KEY", "parley-test-secret"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    await asyncio.to_thread(client.create_bucket, Bucket=BUCKET)
    try:
        yield client
    finally:
        keys = await asyncio.to_thread(_keys, client)
        if keys:
            await asyncio.to_thread(client.delete_objects, Bucket=BUCKET,
                                    Delete={"Objects": [{"Key": k} for k in keys]})
        await asyncio.to_thread(client.delete_bucket, Bucket=BUCKET)
        client.close()


def _keys(client: object) -> list[str]:
    listing = client.list_objects_v2(Bucket=BUCKET)  # type: ignore[attr-defined]
    return [o["Key"] for o in listing.get("Contents", [])]


async def test_recordings_go_to_an_s3_store_and_leave_it_with_the_user(
    settings: Settings, s3: object, s3_endpoint: str, speech: Callable[..., np.ndarray]
) -> None:
    runner, url = await start_server(dataclasses.replace(
        settings, recordings_url=f"s3://{BUCKET}/calls", s3_endpoint_url=s3_endpoint))
    try:
        said = speech(SENTENCE)
        session = await _say_and_hang_up(url, said, record=True)
        await _calls_stored(runner.app)
        (key,) = await asyncio.to_thread(_keys, s3)
        assert key.startswith(f"calls/{session['user_id']}/") and key.endswith(".wav")
        stored = await asyncio.to_thread(lambda: s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())  # type: ignore[attr-defined]
        async with aiohttp.ClientSession() as http:
            entry, data = await _exported_recording(http, url, session)
            assert entry["stored_at"] == f"s3://{BUCKET}/{key}" and data == stored
            _check_both_directions(entry, data, said)
            assert not [p for p in (settings.data_path / "recordings").rglob("*") if p.is_file()], \
                "nothing stays on local disk"
            async with http.delete(f"{url}/api/users/{session['user_id']}",
                                   headers={"Authorization": f"Bearer {session['token']}"}) as r:
                assert r.status == 204
        assert await asyncio.to_thread(_keys, s3) == []
    finally:
        await runner.cleanup()
