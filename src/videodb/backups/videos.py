"""The videos' bytes in the backup repository: a second place for what the video store holds.

`backup-video` (either kind) copies into the repository's `videos/` the bytes and posters of every
video the database names that the repository lacks (content-addressed, so each is copied once
whatever the number of backups), checked against its SHA-256 while copied, and records in the
backup which digests it names. `backup verify` reads every copy a backup names again;
`restore` puts back into the store what it lacks and the repository has, and names the videos
whose bytes are in neither place.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from videodb.backup_repo import BackupInfo, BackupRepo
from videodb.backups.progress import Progress, quiet, size
from videodb.cluster import seaweedfs
from videodb.cluster.patroni_api import PatroniAPI
from videodb.cluster.pg import connect_superuser
from videodb.config import Settings
from videodb.errors import ClusterError
from videodb.layout import StateLayout
from videodb.secrets import ClusterSecrets
from videodb.services.runtime import storage_dir
from videodb.services.storage import MissingBytesError, StoreUnavailableError, VideoStore
from videodb.services.stores import open_store

CHUNK = 1 << 20
NAMED = """
SELECT id::text, title, sha256, size_bytes, has_poster FROM videos ORDER BY created_at
"""


@dataclass(frozen=True)
class NamedVideo:
    id: str
    title: str
    sha256: str
    size_bytes: int
    has_poster: bool


@dataclass
class VideoCopyResult:
    named: int = 0  # distinct digests the database names
    copied: int = 0  # copied into the repository by this run
    bytes_copied: int = 0
    not_in_store: list[str] = field(default_factory=list)  # named, but the store lacks them


@dataclass
class VideoRestoreResult:
    put_back: int = 0
    missing: list[dict[str, str]] = field(default_factory=list)  # {"id", "title", "sha256"}


def video_store(settings: Settings, layout: StateLayout) -> VideoStore:
    local = storage_dir(settings, layout)
    return open_store(seaweedfs.store_settings(settings, layout, local), 1 << 62)


def named_videos(
    settings: Settings, secrets: ClusterSecrets, database: str | None = None
) -> list[NamedVideo]:
    """Every video row of the database (none when it has no videos table: no applications)."""
    primary = PatroniAPI(settings).require_leader("to list the videos")
    with connect_superuser(
        settings, secrets, primary, dbname=database or settings.database.name
    ) as conn:
        found = conn.execute("SELECT to_regclass('public.videos') IS NOT NULL").fetchone()
        if not found or not found[0]:
            return []
        has_poster = conn.execute(
            "SELECT 1 FROM information_schema.columns WHERE table_name = 'videos' "
            "AND column_name = 'has_poster'"
        ).fetchone()
        query = NAMED if has_poster else NAMED.replace("has_poster", "false")
        rows = conn.execute(query).fetchall()
    return [NamedVideo(str(i), str(t), str(s), int(str(n)), bool(p)) for i, t, s, n, p in rows]


def _copy_verified(store: VideoStore, video: NamedVideo, target: Path) -> int:
    """Read the stored bytes into `target`, checking their digest; the bytes copied."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=".copy-")
    try:
        with os.fdopen(fd, "wb") as out:
            reader = store.open_range(video.sha256, 0, video.size_bytes)
            try:
                while chunk := reader.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
            finally:
                reader.close()
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != video.sha256:
            raise ClusterError(
                f"the store's bytes of video {video.id} ({video.title!r}) do not match their "
                f"SHA-256 {video.sha256}: not copied; the store's copy is damaged"
            )
        os.replace(name, target)
    finally:
        Path(name).unlink(missing_ok=True)
    return video.size_bytes


def copy_videos(
    settings: Settings,
    layout: StateLayout,
    repo: BackupRepo,
    info: BackupInfo,
    secrets: ClusterSecrets,
    *,
    progress: Progress = quiet,
) -> VideoCopyResult:
    """Copy what the repository lacks of the videos the database names; record them in `info`."""
    videos = named_videos(settings, secrets)
    result = VideoCopyResult()
    unique = {v.sha256: v for v in videos}
    result.named = len(unique)
    store = video_store(settings, layout)
    try:
        wanted = [v for v in unique.values() if not repo.video_path(v.sha256).exists()]
        if wanted:
            total = sum(v.size_bytes for v in wanted)
            progress(f"copying {len(wanted)} video(s) ({size(total)}) into {repo.videos}")
        for video in wanted:
            try:
                result.bytes_copied += _copy_verified(store, video, repo.video_path(video.sha256))
            except MissingBytesError:
                result.not_in_store.append(video.sha256)
                continue
            result.copied += 1
        for video in unique.values():
            poster = repo.poster_path(video.sha256)
            if video.has_poster and not poster.exists():
                jpeg = store.poster(video.sha256)
                if jpeg is not None:
                    poster.parent.mkdir(parents=True, exist_ok=True)
                    poster.write_bytes(jpeg)
    except StoreUnavailableError as exc:
        raise ClusterError(
            f"the video store did not answer while backing up the videos ({exc}); the database "
            f"backup {info.id} is taken, the videos are not: run backup-video again"
        ) from exc
    finally:
        store.close()
    info.extra["videos"] = sorted(unique)
    info.extra["video_bytes_copied"] = result.bytes_copied
    if result.not_in_store:
        info.extra["videos_not_in_store"] = sorted(result.not_in_store)
    repo.save(info)
    return result


def check_copies(repo: BackupRepo, info: BackupInfo) -> str:
    """Read every copy the backup names again; ClusterError naming the bad ones."""
    named: list[str] = list(info.extra.get("videos", []))
    lacking = set(info.extra.get("videos_not_in_store", []))
    bad = []
    for sha in named:
        if sha in lacking:
            continue
        path = repo.video_path(sha)
        digest = hashlib.sha256()
        try:
            with path.open("rb") as f:
                while chunk := f.read(CHUNK):
                    digest.update(chunk)
        except FileNotFoundError:
            bad.append(f"{sha} (missing)")
            continue
        if digest.hexdigest() != sha:
            bad.append(f"{sha} (damaged)")
    if bad:
        raise ClusterError(
            f"{len(bad)} of the {len(named)} video copies it names are bad: "
            + ", ".join(bad[:5])
            + (" ..." if len(bad) > 5 else "")
        )
    return f"{len(named) - len(lacking)} video copies ok" if named else "no videos named"


def restore_videos(
    settings: Settings,
    layout: StateLayout,
    repo: BackupRepo,
    secrets: ClusterSecrets,
    database: str | None = None,
    *,
    progress: Progress = quiet,
) -> VideoRestoreResult:
    """Put back into the store the bytes (and posters) of restored videos that it lacks."""
    result = VideoRestoreResult()
    videos = named_videos(settings, secrets, database)
    store = video_store(settings, layout)
    try:
        for video in videos:
            if store.exists(video.sha256):
                continue
            copy = repo.video_path(video.sha256)
            if not copy.exists():
                result.missing.append(
                    {"id": video.id, "title": video.title, "sha256": video.sha256}
                )
                continue
            progress(f"putting back the bytes of video {video.id} ({size(video.size_bytes)})")
            store.put_file(video.sha256, copy)
            poster = repo.poster_path(video.sha256)
            if poster.exists():
                store.put_poster(video.sha256, poster.read_bytes())
            result.put_back += 1
    except StoreUnavailableError as exc:
        raise ClusterError(
            f"the video store did not answer while putting the videos back ({exc}); the "
            f"database is restored, and the bytes it names are in {repo.videos} (named by "
            "SHA-256) to copy back once the store answers"
        ) from exc
    finally:
        store.close()
    return result
