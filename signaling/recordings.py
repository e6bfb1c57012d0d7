"""Consented recordings: who may be recorded, where the files go, how they come back.

Recording is opt-in per call: ``POST /api/offer`` with ``"record": true`` (any other value
than a boolean is a 400; absent or false records nothing). The answer says ``"recording"``
so the client can show it. A room is recorded per speaker when its creator asked for it
and only with every participant's own consent (``signaling.rooms_api``): each person's
voice is a mono file of their user, the agent's voice one of the creator's user.

The media server writes the file (``media_server.recording``) into ``DATA_DIR/recordings/
spool`` while the call runs; when the call ends :class:`Recordings` moves it to the sink
(``storage.recordings``: a folder or S3) under ``<user_id>/<recording_id>.wav`` and adds its
row, in a task of its own so a slow upload never holds up a hang-up. Shutdown waits for
those tasks (bounded). The user's export lists the recordings with a download path,
``GET /api/users/{id}/recordings/{rid}``, which like the export needs an export token;
deleting the user removes the files before the rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from media_server.call import CallSession, RecorderFactory
from media_server.recording import CHANNELS, Recorder, RecordingFile
from parley.config import Settings
from pipeline.tasks import TaskRegistry
from storage import NewRecording, RecordingSink, Store
from storage.records import new_id

logger = logging.getLogger(__name__)

RECORDINGS_DIR = "recordings"
SPOOL_DIR = "spool"
FORMAT = "wav"
STORE_TIMEOUT_S = 60.0  # at shutdown: how long uploads still running may take


@dataclass(frozen=True, slots=True)
class _Track:
    """Whose one recording is: the session (and so the user) it belongs to, and where it came from."""

    session: CallSession
    call_id: str  # the call's id, or in a room the participant's id (``agent`` for the agent)
    room_id: str | None
    recording_id: str

    @property
    def where(self) -> str:
        """The log prefix of the call or room speaker."""
        if self.room_id is None:
            return f"call {self.call_id[:8]}"
        return f"room {self.room_id[:8]} {self.call_id[:8]}"

    @property
    def key(self) -> str:
        return f"{self.session.user_id}/{self.recording_id}.{FORMAT}"


class Recordings:
    """Makes recorders for consenting calls and room speakers and stores what they produce
    (one per worker)."""

    def __init__(self, settings: Settings, store: Store, sink: RecordingSink) -> None:
        self._store = store
        self.sink = sink
        self._spool = settings.data_path / RECORDINGS_DIR / SPOOL_DIR
        self._tasks = TaskRegistry("recordings")
        self._recording = 0  # recorders made and not finished yet
        self._quiet = asyncio.Event()  # set while _recording == 0
        self._quiet.set()

    def factory(self, session: CallSession, channels: tuple[str, ...] = CHANNELS,
                room_id: str | None = None) -> RecorderFactory:
        """What makes the recorder of one consenting call (``call_id`` -> recorder), or with
        ``room_id`` of one consenting room speaker (``call_id`` = the participant's id, or
        ``agent``; mono ``channels``). The file and its row belong to ``session``'s user."""

        def make(call_id: str) -> Recorder:
            track = _Track(session, call_id, room_id, new_id())
            # under the user's id: what a crash leaves behind still goes when the user is deleted
            path = self._spool / session.user_id / f"{track.recording_id}.{FORMAT}"
            recorder = Recorder(path, lambda done: self._finished(track, done), f"{track.where} recording",
                                channels)
            self._recording += 1
            self._quiet.clear()
            return recorder

        return make

    def _finished(self, track: _Track, done: RecordingFile | None) -> None:
        if done is not None:  # registered before the count drops: idle() waits for it
            self._tasks.spawn(self._keep(track, done), f"store {track.recording_id[:8]}")
        self._recording -= 1
        if self._recording == 0:
            self._quiet.set()

    async def _keep(self, track: _Track, done: RecordingFile) -> None:
        """File to the sink, then its row: a row never points at audio that is not there."""
        key, session = track.key, track.session
        try:
            await self.sink.put(done.path, key)
            await self._store.recordings.insert(NewRecording(
                id=track.recording_id, user_id=session.user_id, session_id=session.session_id,
                call_id=track.call_id, key=key, format=FORMAT, sample_rate=done.sample_rate,
                channels=done.channels, duration_s=done.duration_s, bytes=done.bytes, started_at=done.started_at,
                ended_at=done.ended_at, room_id=track.room_id,
            ))
        except Exception:
            logger.exception("%s: storing recording %s (%s) failed", track.where, track.recording_id[:8],
                             self.sink.describe(key))
            await self.sink.delete([key])  # the user did not get it listed: do not keep it either
            done.path.unlink(missing_ok=True)
            return
        logger.info("%s: recording %s stored at %s", track.where, track.recording_id[:8], self.sink.describe(key))

    async def idle(self, timeout: float) -> bool:
        """Wait until nothing is recording and every recording is stored (True), or ``timeout``
        passes (False)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            await asyncio.wait_for(self._quiet.wait(), timeout)
        except TimeoutError:
            return False
        return not await self._tasks.wait(max(0.0, deadline - loop.time()))

    async def close(self) -> None:
        late = await self._tasks.wait(STORE_TIMEOUT_S)
        if late:
            logger.warning("%d recordings still being stored at shutdown; they are lost", len(late))
        await self._tasks.cancel_all(1.0)
        await self.sink.close()

    async def forget_user(self, user_id: str) -> int:
        """Delete every recording file of the user (their rows go with the user); how many.

        Spooled files too: a worker that died mid-call leaves its recording there, unlisted.
        """
        keys = await self._store.recordings.keys_of_user(user_id)
        if keys:
            await self.sink.delete(keys)
        spooled = await asyncio.to_thread(_remove_folder, self._spool / user_id)
        return len(keys) + spooled

    def export_entry(self, row: dict[str, Any]) -> dict[str, Any]:
        """A ``recordings`` row as the export shows it: where it is and how to download it."""
        entry = {k: v for k, v in row.items() if k != "key"}
        entry["stored_at"] = self.sink.describe(row["key"])
        entry["download"] = f"/api/users/{row['user_id']}/recordings/{row['id']}"
        return entry

    async def stream(self, request: web.Request, row: dict[str, Any]) -> web.StreamResponse:
        """Send one recording's bytes, piece by piece (a long call never sits in memory)."""
        pieces = self.sink.read(row["key"])
        try:
            first = await anext(pieces)
        except (FileNotFoundError, StopAsyncIteration):
            await pieces.aclose()
            logger.error("recording %s is listed but its audio is missing at %s", row["id"][:8],
                         self.sink.describe(row["key"]))
            raise
        response = web.StreamResponse(headers={
            "Content-Type": "audio/wav", "Content-Length": str(row["bytes"]),
            "Content-Disposition": f'attachment; filename="{row["id"]}.{row["format"]}"',
            "Cache-Control": "no-store",
        })
        await response.prepare(request)
        try:
            await response.write(first)
            async for piece in pieces:
                await response.write(piece)
        finally:
            await pieces.aclose()
        await response.write_eof()
        return response


def _remove_folder(folder: Path) -> int:
    """Delete the files in ``folder`` and the folder itself; how many files went."""
    if not folder.is_dir():
        return 0
    files = [p for p in folder.iterdir() if p.is_file()]
    for path in files:
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # a recording started meanwhile keeps it
        folder.rmdir()
    return len(files)
