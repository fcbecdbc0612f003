"""Guards for the long operations on data: room on the disk first."""

from __future__ import annotations

import shutil
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
