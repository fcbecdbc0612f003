"""Guards for the long operations on data: one restore at a time, and room on the disk first."""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from videodb.errors import ClusterError

HEADROOM = 1.1  # a copy needs its size, plus some for the WAL a recovery writes


def require_space(directory: Path, needed: int, what: str) -> None:
    free = shutil.disk_usage(directory).free
    if free < needed * HEADROOM:
        raise ClusterError(
            f"not enough free space for {what}: it needs about {needed * HEADROOM / 1e6:,.0f} MB "
            f"in {directory}, which has {free / 1e6:,.0f} MB free; free some space (old "
            "data/before-restore-* directories, 'backup prune') and try again"
        )


@contextmanager
def exclusive(lock_file: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `lock_file` for the block; refuse at once if someone holds it."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise ClusterError(
                f"another {what} is running (pid {holder}); wait for it to finish"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)
