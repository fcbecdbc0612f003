"""The local backend: a directory on the application host (one machine's default).

Videos at <root>/<aa>/<bb>/<sha256>, posters at <root>/posters/<sha256>.jpg, uploads in progress
in <root>/tmp. An upload is a temporary file renamed into place once checked.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from videodb.services.storage import (
    ByteReader,
    MissingBytesError,
    PendingUpload,
    StoredFile,
    StoredObject,
    StoreUnavailableError,
    VideoStore,
)

SHA_LENGTH = 64


class LocalPending(PendingUpload):
    def __init__(self, store: LocalStore, declared_type: str | None) -> None:
        super().__init__(store.max_bytes, declared_type)
        self.store = store
        fd, name = tempfile.mkstemp(dir=store.root / "tmp", prefix="upload-")
        self.tmp = Path(name)
        self._out = os.fdopen(fd, "wb")

    def _stage(self, chunk: bytes | memoryview) -> None:
        self._out.write(chunk)

    def _complete_staging(self) -> None:
        self._out.flush()
        os.fsync(self._out.fileno())
        self._out.close()

    def media_source(self) -> str:
        return str(self.tmp)

    def publish(self) -> StoredFile:
        assert self.result is not None, "finish() first"
        final = self.store.path_for(self.result.sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        if self.tmp.exists():
            if final.exists():
                self.tmp.unlink()
            else:
                os.replace(self.tmp, final)
        return self.result

    def discard(self) -> None:
        if not self._out.closed:
            self._out.close()
        self.tmp.unlink(missing_ok=True)


class FileReader(ByteReader):
    def __init__(self, path: Path, start: int, length: int) -> None:
        try:
            self._fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise MissingBytesError(f"not in storage ({path})") from None
        self.path = path
        self._offset = start
        self._end = start + length

    def read(self, size: int) -> bytes:
        if self._offset >= self._end:
            return b""
        chunk = os.pread(self._fd, min(size, self._end - self._offset), self._offset)
        if not chunk:
            raise MissingBytesError(f"{self.path} is shorter than its recorded size")
        self._offset += len(chunk)
        return chunk

    def close(self) -> None:
        os.close(self._fd)


def _modified(path: Path) -> datetime:
    return datetime.fromtimestamp(path.stat().st_mtime, UTC)


class LocalStore(VideoStore):
    backend = "local"

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        for folder in (root / "tmp", root / "posters"):
            folder.mkdir(parents=True, exist_ok=True)

    def describe(self) -> str:
        return f"directory {self.root}"

    def path_for(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def poster_path(self, sha256: str) -> Path:
        return self.root / "posters" / f"{sha256}.jpg"

    def begin(self, declared_type: str | None) -> PendingUpload:
        return LocalPending(self, declared_type)

    def ensure_ready(self) -> None:
        try:
            with tempfile.NamedTemporaryFile(dir=self.root / "tmp", prefix="probe-"):
                pass
        except OSError as exc:
            raise StoreUnavailableError(
                f"video storage {self.root} cannot be written ({exc.strerror})"
            ) from exc

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).exists()

    def open_range(self, sha256: str, start: int, length: int) -> ByteReader:
        return FileReader(self.path_for(sha256), start, length)

    def remove(self, sha256: str) -> None:
        self.path_for(sha256).unlink(missing_ok=True)
        self.poster_path(sha256).unlink(missing_ok=True)

    def put_file(self, sha256: str, path: Path) -> None:
        final = self.path_for(sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.root / "tmp", prefix="restore-")
        with os.fdopen(fd, "wb") as out, path.open("rb") as source:
            shutil.copyfileobj(source, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        os.replace(name, final)

    def put_poster(self, sha256: str, jpeg: bytes) -> None:
        final = self.poster_path(sha256)
        fd, name = tempfile.mkstemp(dir=self.root / "tmp", prefix="poster-")
        with os.fdopen(fd, "wb") as out:
            out.write(jpeg)
        os.replace(name, final)

    def poster(self, sha256: str) -> bytes | None:
        try:
            return self.poster_path(sha256).read_bytes()
        except FileNotFoundError:
            return None

    def listing(self) -> Iterator[StoredObject]:
        for path in (self.root / "tmp").iterdir():
            yield StoredObject("staged", path.name, _modified(path))
        for path in (self.root / "posters").glob("*.jpg"):
            yield StoredObject("poster", path.stem, _modified(path))
        for path in self.root.glob("??/??/*"):
            if len(path.name) == SHA_LENGTH and path.is_file():
                yield StoredObject("video", path.name, _modified(path))

    def remove_object(self, item: StoredObject) -> None:
        if item.kind == "staged":
            (self.root / "tmp" / item.name).unlink(missing_ok=True)
        elif item.kind == "poster":
            self.poster_path(item.name).unlink(missing_ok=True)
        else:
            self.path_for(item.name).unlink(missing_ok=True)
