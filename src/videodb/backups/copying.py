"""Copying a data directory (a base backup) for a throwaway instance, with progress."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from videodb.backups.progress import Meter
from videodb.layout import ServiceUser


def copy_tree(src: Path, dst: Path, user: ServiceUser, meter: Meter) -> int:
    """Copy `src` into a new `dst` owned by `user` (0700, as PostgreSQL wants); returns bytes."""
    dst.mkdir(mode=0o700)
    copied = 0
    for root, dirs, files in os.walk(src):
        rel = Path(root).relative_to(src)
        for name in dirs:
            (dst / rel / name).mkdir(mode=0o700)
        for name in files:
            target = dst / rel / name
            with (Path(root) / name).open("rb") as fin, target.open("wb") as fout:
                while chunk := fin.read(1 << 20):
                    fout.write(chunk)
                    copied += len(chunk)
                    meter.update(copied)
            os.chmod(target, 0o600)
    if not user.is_current:
        for root, dirs, files in os.walk(dst):
            for name in dirs + files:
                os.chown(os.path.join(root, name), user.uid, user.gid)
        os.chown(dst, user.uid, user.gid)
    meter.update(copied, force=True)
    return copied


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
