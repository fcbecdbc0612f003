"""The backup repository: one directory with base backups, logical dumps and the WAL archive.

base/<id>/        a plain-format pg_basebackup (with its WAL and backup_manifest)
base/<id>.json    what `backup list` shows about it
dumps/<id>.dump   a pg_dump custom-format file, dumps/<id>.json beside it
wal/              archived WAL segments and timeline history files (archive_mode = always)
videos/           the videos' bytes the backups name, videos/<aa>/<sha256>, and their posters in
                  videos/posters/<sha256>.jpg (backups/videos.py)
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from videodb.config import Settings
from videodb.errors import ConfigError
from videodb.layout import ServiceUser, StateLayout

Kind = Literal["physical", "logical"]


@dataclass
class BackupInfo:
    id: str
    kind: Kind
    started_at: str
    finished_at: str
    size_bytes: int
    source: str  # the node it was taken from
    database: str | None = None  # logical: the database dumped
    timeline: int | None = None
    start_lsn: str | None = None
    end_lsn: str | None = None
    sha256: str | None = None  # logical: of the dump file
    verified_at: str | None = None
    verified: bool | None = None  # None: never verified
    verify_detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def new_id(kind: Kind) -> str:
    """Sortable by time: 20261126T010203456Z-base (milliseconds), -dump for a logical one."""
    now = datetime.now(UTC)
    suffix = "base" if kind == "physical" else "dump"
    return f"{now:%Y%m%dT%H%M%S}{now.microsecond // 1000:03d}Z-{suffix}"


class BackupRepo:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.base = root / "base"
        self.dumps = root / "dumps"
        self.wal = root / "wal"
        self.videos = root / "videos"

    def video_path(self, sha256: str) -> Path:
        return self.videos / sha256[:2] / sha256

    def poster_path(self, sha256: str) -> Path:
        return self.videos / "posters" / f"{sha256}.jpg"

    def ensure(self, uid: int | None = None, gid: int | None = None) -> None:
        """Create the directories; the service user (which archives WAL) must own them."""
        for directory in (self.root, self.base, self.dumps, self.wal, self.videos):
            if directory.exists() and not directory.is_dir():
                raise ConfigError(
                    f"the backup repository's {directory} is not a directory; move it away "
                    "(the repository holds base/, dumps/, wal/ and videos/ directories), or "
                    "choose another repository with --set backup.repo_dir=PATH"
                )
            directory.mkdir(parents=True, exist_ok=True)
            if uid is not None and gid is not None:
                os.chown(directory, uid, gid)
            os.chmod(directory, 0o750)

    def data_path(self, info: BackupInfo) -> Path:
        return self.base / info.id if info.kind == "physical" else self.dumps / f"{info.id}.dump"

    def _meta_path(self, backup_id: str) -> Path:
        if backup_id.endswith("-base"):
            return self.base / f"{backup_id}.json"
        return self.dumps / f"{backup_id}.json"

    def save(self, info: BackupInfo) -> None:
        path = self._meta_path(info.id)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(info.as_dict(), indent=2), encoding="utf-8")
        os.replace(tmp, path)

    def all(self) -> list[BackupInfo]:
        infos = []
        for folder in (self.base, self.dumps):
            if not folder.is_dir():
                continue
            for meta in folder.glob("*.json"):
                try:
                    infos.append(BackupInfo(**json.loads(meta.read_text(encoding="utf-8"))))
                except (ValueError, TypeError):
                    continue  # a half-written or foreign file: not a backup of ours
        return sorted(infos, key=lambda i: i.id)

    def get(self, backup_id: str) -> BackupInfo:
        for info in self.all():
            if info.id == backup_id:
                return info
        known = ", ".join(i.id for i in self.all()) or "none yet"
        raise ConfigError(
            f"no backup {backup_id!r} in {self.root}; the backups are: {known} "
            "('platform.sh backup list')"
        )

    def latest(self, kind: Kind) -> BackupInfo:
        found = [i for i in self.all() if i.kind == kind]
        if not found:
            raise ConfigError(
                f"no {kind} backup in {self.root} yet; take one with 'platform.sh backup-video"
                f"{' --physical' if kind == 'physical' else ''}'"
            )
        return found[-1]

    def delete(self, info: BackupInfo) -> None:
        path = self.data_path(info)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        self._meta_path(info.id).unlink(missing_ok=True)

    def wal_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.wal.iterdir() if p.is_file())


def repo_for(settings: Settings, layout: StateLayout) -> BackupRepo:
    return BackupRepo(settings.backup.repo_dir or layout.backups)


def ready_repo(settings: Settings, layout: StateLayout, user: ServiceUser) -> BackupRepo:
    """The repository, its directories created and owned by the service user."""
    repo = repo_for(settings, layout)
    repo.ensure(None if user.is_current else user.uid, None if user.is_current else user.gid)
    return repo


def tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
