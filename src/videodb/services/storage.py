"""Content-addressed storage for uploaded videos: bytes named by their SHA-256, behind one
interface with two backends (services/local_store.py: a directory; services/s3_store.py: any S3,
SeaweedFS's gateway included).

An upload streams into a staging place while it is hashed and counted; only a complete, checked
upload is published under its digest, inside the database transaction that records it (under the
digest's advisory lock), so a failed or oversized upload leaves nothing behind, and the same bytes
uploaded twice are stored once. What a crash leaves staged, and bytes no row names, are removed
by the sweeper (services/sweeper.py) after a grace period.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from videodb.errors import VideoDBError

ALLOWED_TYPES = {
    "video/mp4": "mp4",
    "video/webm": "webm",
    "video/ogg": "ogg",
    "video/quicktime": "mov",
}

# What a store keeps, by kind: a video's bytes, its poster, and uploads not finished yet.
ObjectKind = Literal["video", "poster", "staged"]


class StorageError(VideoDBError):
    """An upload was refused; `status` is the HTTP status a service should answer with."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class StoreUnavailableError(StorageError):
    """The store did not answer or failed: 503, try again."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 503)


class MissingBytesError(VideoDBError):
    """A video's bytes are not in the store (recorded, but lost or not there yet)."""


@dataclass(frozen=True)
class StoredFile:
    sha256: str
    size_bytes: int
    content_type: str


@dataclass(frozen=True)
class StoredObject:
    """One thing in a store, as the sweeper sees it."""

    kind: ObjectKind
    name: str  # the digest (video, poster) or the staging name
    modified: datetime  # timezone-aware


# Types that say nothing about the bytes (curl -F file=@clip.mp4 sends the first): the upload is
# judged by what it contains, like one declared as a video type.
GENERIC_TYPES = frozenset({"application/octet-stream", "binary/octet-stream"})


def media_type(declared: str | None) -> str | None:
    """The media type of a Content-Type value, lower-cased and without parameters."""
    if declared is None:
        return None
    kind = declared.split(";", 1)[0].strip().lower()
    return kind or None


def sniff_content_type(head: bytes) -> str | None:
    """The container the first bytes belong to, whatever the client declared."""
    if len(head) >= 12 and head[4:8] == b"ftyp":
        brand = head[8:12]
        return "video/quicktime" if brand == b"qt  " else "video/mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video/webm"
    if head.startswith(b"OggS"):
        return "video/ogg"
    return None


def check_declared_type(declared_type: str | None) -> None:
    kind = media_type(declared_type)
    if kind is not None and kind not in ALLOWED_TYPES and kind not in GENERIC_TYPES:
        raise StorageError(
            f"content type {declared_type!r} is not accepted; upload one of "
            f"{', '.join(sorted(ALLOWED_TYPES))} (or application/octet-stream, judged by "
            "its bytes)",
            415,
        )


class PendingUpload(ABC):
    """An upload in progress: bytes go to the store's staging place while hashed and counted.

    `write()` takes the bytes as they arrive (on the event loop: it never waits on the network;
    `backpressure()` is what to await before feeding more); `finish()` checks what arrived;
    `publish()` then puts it in place under its digest (call it inside the database transaction
    that records it, under the digest's advisory lock, so that a concurrent delete of the same
    bytes is ordered against it). `discard()` removes whatever is left; it is safe to call at
    any time and after `publish()`.
    """

    def __init__(self, max_bytes: int, declared_type: str | None) -> None:
        check_declared_type(declared_type)
        self.max_bytes = max_bytes
        self.declared_type = declared_type or "no type"
        self._digest = hashlib.sha256()
        self.size = 0
        self._head = b""
        self.result: StoredFile | None = None

    def write(self, chunk: bytes | memoryview) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise StorageError(f"file is larger than the limit of {self.max_bytes} bytes", 413)
        if len(self._head) < 16:
            self._head += bytes(chunk[: 16 - len(self._head)])
        self._digest.update(chunk)
        self._stage(chunk)

    def backpressure(self) -> Future[object] | None:
        """Something to wait for before more bytes are written (None: go on)."""
        return None

    def finish(self, expected_sha256: str | None = None) -> StoredFile:
        """Complete the staged bytes and check them: not empty, a video container, the digest
        the client gave. Blocking: call it from a worker thread."""
        self._complete_staging()
        if self.size == 0:
            raise StorageError("the file is empty", 422)
        sniffed = sniff_content_type(self._head)
        if sniffed is None:
            raise StorageError(
                f"the file does not look like a video (declared {self.declared_type}); "
                "upload an MP4, WebM, Ogg or QuickTime file",
                415,
            )
        sha256 = self._digest.hexdigest()
        if expected_sha256 is not None and expected_sha256.strip().lower() != sha256:
            raise StorageError(
                f"SHA-256 mismatch: the client said {expected_sha256}, the bytes are {sha256}",
                422,
            )
        self.result = StoredFile(sha256, self.size, sniffed)
        return self.result

    @abstractmethod
    def _stage(self, chunk: bytes | memoryview) -> None: ...

    @abstractmethod
    def _complete_staging(self) -> None: ...

    @abstractmethod
    def media_source(self) -> str:
        """Where ffprobe and ffmpeg read the staged bytes: a path or a URL (after finish)."""

    @abstractmethod
    def publish(self) -> StoredFile:
        """Put the checked bytes in place under their digest (the same bytes there: keep them)."""

    @abstractmethod
    def discard(self) -> None: ...


class ByteReader(ABC):
    """Bytes [start, start+length) of a stored video, read chunk by chunk (blocking calls)."""

    @abstractmethod
    def read(self, size: int) -> bytes:
        """Up to `size` bytes; b"" at the end of the range."""

    @abstractmethod
    def close(self) -> None: ...


class VideoStore(ABC):
    """Where videos' bytes and posters live. Every method blocks: call from a worker thread
    (except `begin`, which only prepares)."""

    backend: str
    max_bytes: int

    @abstractmethod
    def begin(self, declared_type: str | None) -> PendingUpload: ...

    @abstractmethod
    def describe(self) -> str:
        """Where the bytes are, for messages: a directory or an endpoint and bucket."""

    @abstractmethod
    def ensure_ready(self) -> None:
        """Check that the store takes a write (make the bucket if missing); raise
        StoreUnavailableError saying what failed."""

    @abstractmethod
    def exists(self, sha256: str) -> bool: ...

    @abstractmethod
    def open_range(self, sha256: str, start: int, length: int) -> ByteReader:
        """Raises MissingBytesError when the bytes are not stored."""

    @abstractmethod
    def remove(self, sha256: str) -> None:
        """Remove a video's bytes and its poster (nothing there: nothing done)."""

    @abstractmethod
    def put_file(self, sha256: str, path: Path) -> None:
        """Store a file's bytes (already checked against `sha256`) as that video's: restores."""

    @abstractmethod
    def put_poster(self, sha256: str, jpeg: bytes) -> None: ...

    @abstractmethod
    def poster(self, sha256: str) -> bytes | None: ...

    @abstractmethod
    def listing(self) -> Iterator[StoredObject]:
        """Everything stored, for the sweeper: videos, posters and staged uploads."""

    @abstractmethod
    def remove_object(self, item: StoredObject) -> None:
        """Remove one listed object (the sweeper's: a staged upload, or one video's bytes)."""

    def close(self) -> None:
        return None

    def save(
        self,
        chunks: Iterable[bytes],
        declared_type: str | None,
        expected_sha256: str | None = None,
    ) -> StoredFile:
        """Store a whole upload at once: begin, write every chunk, finish and publish."""
        pending = self.begin(declared_type)
        try:
            for chunk in chunks:
                pending.write(chunk)
                waiting = pending.backpressure()
                if waiting is not None:
                    waiting.result()
            pending.finish(expected_sha256)
            return pending.publish()
        finally:
            pending.discard()
