"""Content-addressed storage for uploaded videos: files named by their SHA-256.

Bytes stream into a temporary file in the same directory tree while they are hashed and counted;
only a complete, verified upload is renamed into place, so a failed or oversized upload leaves
nothing behind, and the same bytes uploaded twice are stored once.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from videodb.errors import VideoDBError

ALLOWED_TYPES = {
    "video/mp4": "mp4",
    "video/webm": "webm",
    "video/ogg": "ogg",
    "video/quicktime": "mov",
}


class StorageError(VideoDBError):
    """An upload was refused; `status` is the HTTP status a service should answer with."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class StoredFile:
    sha256: str
    size_bytes: int
    path: Path
    content_type: str
    created: bool  # False when the same bytes were stored already


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


class PendingFile:
    """An upload in progress: bytes go to a temporary file while they are hashed and counted.

    `finish()` checks what arrived; `publish()` then renames it into place under its digest
    (call it inside the database transaction that records it, so a concurrent delete of the
    same bytes is ordered against it). `discard()` removes whatever is left; it is safe to call
    at any time and after `publish()`.
    """

    def __init__(self, store: ContentStore, declared_type: str | None) -> None:
        kind = media_type(declared_type)
        if kind is not None and kind not in ALLOWED_TYPES and kind not in GENERIC_TYPES:
            raise StorageError(
                f"content type {declared_type!r} is not accepted; upload one of "
                f"{', '.join(sorted(ALLOWED_TYPES))} (or application/octet-stream, judged by "
                "its bytes)",
                415,
            )
        self.store = store
        self.declared_type = declared_type or "no type"
        self._digest = hashlib.sha256()
        self.size = 0
        self._head = b""
        fd, name = tempfile.mkstemp(dir=store.root / "tmp", prefix="upload-")
        self.tmp = Path(name)
        self._out = os.fdopen(fd, "wb")
        self.result: StoredFile | None = None

    def write(self, chunk: bytes | memoryview) -> None:
        self.size += len(chunk)
        if self.size > self.store.max_bytes:
            limit = self.store.max_bytes
            raise StorageError(f"file is larger than the limit of {limit} bytes", 413)
        if len(self._head) < 16:
            self._head += bytes(chunk[: 16 - len(self._head)])
        self._digest.update(chunk)
        self._out.write(chunk)

    def finish(self, expected_sha256: str | None = None) -> StoredFile:
        """Flush to disk and check: not empty, a video container, the digest the client gave."""
        self._out.flush()
        os.fsync(self._out.fileno())
        self._out.close()
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
        final = self.store.path_for(sha256)
        self.result = StoredFile(sha256, self.size, final, sniffed, not final.exists())
        return self.result

    def publish(self) -> StoredFile:
        """Move the checked file into place (same bytes already there: keep those)."""
        assert self.result is not None, "finish() first"
        final = self.result.path
        final.parent.mkdir(parents=True, exist_ok=True)
        if self.tmp.exists():
            os.replace(self.tmp, final)
        return self.result

    def discard(self) -> None:
        if not self._out.closed:
            self._out.close()
        self.tmp.unlink(missing_ok=True)


class ContentStore:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        (root / "tmp").mkdir(parents=True, exist_ok=True)

    def path_for(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def begin(self, declared_type: str | None) -> PendingFile:
        return PendingFile(self, declared_type)

    def set_aside(self, sha256: str) -> Path | None:
        """Move stored bytes out of reach before deleting them (None if they are not there)."""
        aside = self.root / "tmp" / f"deleting-{sha256}-{os.getpid()}"
        try:
            os.replace(self.path_for(sha256), aside)
        except FileNotFoundError:
            return None
        return aside

    def put_back(self, aside: Path, sha256: str) -> None:
        final = self.path_for(sha256)
        if not final.exists():
            os.replace(aside, final)
        else:
            aside.unlink(missing_ok=True)

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
            pending.finish(expected_sha256)
            return pending.publish()
        finally:
            pending.discard()
