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


class ContentStore:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        (root / "tmp").mkdir(parents=True, exist_ok=True)

    def path_for(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def save(
        self,
        chunks: Iterable[bytes],
        declared_type: str | None,
        expected_sha256: str | None = None,
    ) -> StoredFile:
        if declared_type not in ALLOWED_TYPES:
            raise StorageError(
                f"content type {declared_type!r} is not accepted; upload one of "
                f"{', '.join(sorted(ALLOWED_TYPES))}",
                415,
            )
        digest = hashlib.sha256()
        size = 0
        head = b""
        fd, tmp_name = tempfile.mkstemp(dir=self.root / "tmp", prefix="upload-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise StorageError(
                            f"file is larger than the limit of {self.max_bytes} bytes", 413
                        )
                    if len(head) < 16:
                        head += chunk[: 16 - len(head)]
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if size == 0:
                raise StorageError("the file is empty", 422)
            sniffed = sniff_content_type(head)
            if sniffed is None:
                raise StorageError(
                    f"the file does not look like a video (declared {declared_type}); "
                    "upload an MP4, WebM, Ogg or QuickTime file",
                    415,
                )
            sha256 = digest.hexdigest()
            if expected_sha256 is not None and expected_sha256.lower() != sha256:
                raise StorageError(
                    f"SHA-256 mismatch: the client said {expected_sha256}, the bytes are {sha256}",
                    422,
                )
            final = self.path_for(sha256)
            final.parent.mkdir(parents=True, exist_ok=True)
            created = not final.exists()
            if created:
                os.replace(tmp, final)
            return StoredFile(sha256, size, final, sniffed, created)
        finally:
            tmp.unlink(missing_ok=True)
