"""Where finished call recordings live: a folder under DATA_DIR, or an S3-compatible store.

A recording reaches a sink as a finished local file (the media server writes it chunk by
chunk while the call runs, see ``media_server.recording``); the sink moves it to its final
place under a key such as ``<user_id>/<recording_id>.wav``, streams it back for a download
and deletes keys when the user asks for everything to go. ``PARLEY_RECORDINGS_URL`` picks
the sink: empty = :class:`LocalRecordings` in ``DATA_DIR/recordings``, ``s3://bucket/prefix``
= :class:`S3Recordings` (endpoint ``PARLEY_S3_ENDPOINT_URL``, credentials and region from the
standard ``AWS_*`` variables, as boto3 reads them).

boto3 is synchronous: every S3 call runs in the default executor, never on the event loop.
So do the local file moves, reads and deletes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import urlsplit

from parley.config import Settings

logger = logging.getLogger(__name__)

READ_CHUNK = 256 * 1024  # a download is streamed in pieces of this size: bounded memory
_T = TypeVar("_T")


async def _off_loop(fn: Callable[..., _T], *args: Any) -> _T:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


def _open_binary(path: Path) -> BinaryIO:
    return open(path, "rb")  # closed by the caller's finally


class RecordingSink(ABC):
    """The final home of recordings, addressed by key (``user/recording.wav``)."""

    @abstractmethod
    async def put(self, path: Path, key: str) -> None:
        """Store the finished file at ``path`` under ``key``; the file is gone afterwards."""

    @abstractmethod
    def read(self, key: str) -> AsyncGenerator[bytes, None]:
        """The stored bytes of ``key`` in pieces; FileNotFoundError if there are none."""

    @abstractmethod
    async def delete(self, keys: Sequence[str]) -> None:
        """Remove ``keys`` (those already missing are fine: a retried delete must succeed)."""

    @abstractmethod
    def describe(self, key: str) -> str:
        """Where ``key`` is stored, for the export (a path or an ``s3://`` URL; no secrets)."""

    async def close(self) -> None:  # noqa: B027  # optional hook: most sinks hold nothing to release
        """Release clients and connections."""


class LocalRecordings(RecordingSink):
    """Recordings as files under one folder (``DATA_DIR/recordings`` by default)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):  # keys are ours, but never trust a path
            raise ValueError(f"recording key {key!r} leaves the recordings folder")
        return path

    async def put(self, path: Path, key: str) -> None:
        target = self._path(key)

        def move() -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(path, target)  # a rename when both are on one file system

        await _off_loop(move)

    async def read(self, key: str) -> AsyncGenerator[bytes, None]:
        f = await _off_loop(_open_binary, self._path(key))
        try:
            while chunk := await _off_loop(f.read, READ_CHUNK):
                yield chunk
        finally:
            await _off_loop(f.close)

    async def delete(self, keys: Sequence[str]) -> None:
        def remove() -> None:
            for key in keys:
                self._path(key).unlink(missing_ok=True)

        await _off_loop(remove)

    def describe(self, key: str) -> str:
        return str(self._path(key))


class S3Recordings(RecordingSink):
    """Recordings as objects in an S3-compatible bucket, under an optional key prefix."""

    def __init__(self, bucket: str, prefix: str, endpoint_url: str | None) -> None:
        import boto3  # only deployments that store in S3 need it loaded

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._client = boto3.client("s3", endpoint_url=endpoint_url or None,
                                    region_name=os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    async def put(self, path: Path, key: str) -> None:
        # upload_file goes multipart past 8 MiB: a long call never sits in memory whole
        await _off_loop(self._client.upload_file, str(path), self.bucket, self._key(key))
        await _off_loop(path.unlink)

    async def read(self, key: str) -> AsyncGenerator[bytes, None]:
        try:
            response = await _off_loop(lambda: self._client.get_object(Bucket=self.bucket, Key=self._key(key)))
        except self._client.exceptions.NoSuchKey as exc:
            raise FileNotFoundError(self.describe(key)) from exc
        body = response["Body"]
        try:
            while chunk := await _off_loop(body.read, READ_CHUNK):
                yield chunk
        finally:
            await _off_loop(body.close)

    async def delete(self, keys: Sequence[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            objects = [{"Key": self._key(k)} for k in keys[start:start + 1000]]
            result = await _off_loop(self._delete_objects, objects)
            if result.get("Errors"):
                raise OSError(f"S3 refused to delete {len(result['Errors'])} recordings: "
                              f"{result['Errors'][0].get('Code')}")

    def _delete_objects(self, objects: list[dict[str, str]]) -> Any:
        return self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})

    def describe(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    async def close(self) -> None:
        await _off_loop(self._client.close)


def open_sink(settings: Settings) -> RecordingSink:
    """The sink ``PARLEY_RECORDINGS_URL`` names; ValueError for a scheme we do not know."""
    url = settings.recordings_url
    if not url:
        return LocalRecordings(settings.data_path / "recordings")
    parts = urlsplit(url)
    if parts.scheme == "s3" and parts.netloc:
        return S3Recordings(parts.netloc, parts.path, settings.s3_endpoint_url)
    if parts.scheme == "file" or not parts.scheme:
        return LocalRecordings(Path(parts.path if parts.scheme else url))
    raise ValueError(f"PARLEY_RECORDINGS_URL={url!r}: use s3://bucket/prefix, a folder, or leave it empty")
