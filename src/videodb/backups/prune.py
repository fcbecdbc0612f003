"""`backup prune --keep N`: the newest N backups of each kind stay; WAL older than the oldest
base backup kept goes (pg_archivecleanup), since no restore can start before that backup."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from videodb.backup_repo import BackupInfo, BackupRepo
from videodb.config import Settings
from videodb.db.token import parse_lsn
from videodb.errors import ConfigError
from videodb.runner import run_tool

log = logging.getLogger(__name__)

SEGMENT_BYTES = 16 * 1024 * 1024


@dataclass
class PruneResult:
    deleted: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    wal_before: int = 0  # bytes of archived WAL before and after
    wal_after: int = 0
    oldest_wal_kept: str | None = None


def wal_file_name(timeline: int, lsn: str) -> str:
    """The WAL segment holding `lsn` (16 MB segments, as initdb made them)."""
    position = parse_lsn(lsn)
    segment = position // SEGMENT_BYTES
    per_id = 0x100000000 // SEGMENT_BYTES
    return f"{timeline:08X}{segment // per_id:08X}{segment % per_id:08X}"


def prune(settings: Settings, repo: BackupRepo, keep: int) -> PruneResult:
    if keep < 1:
        raise ConfigError(f"--keep {keep}: keep at least 1 backup of each kind")
    result = PruneResult(wal_before=repo.wal_bytes())
    kept_physical: list[BackupInfo] = []
    for kind in ("physical", "logical"):
        infos = [i for i in repo.all() if i.kind == kind]
        old, newest = infos[:-keep], infos[-keep:]
        for info in old:
            repo.delete(info)
            result.deleted.append(info.id)
        result.kept += [i.id for i in newest]
        if kind == "physical":
            kept_physical = newest
    if kept_physical:
        oldest = kept_physical[0]
        assert oldest.timeline is not None and oldest.start_lsn is not None
        first = wal_file_name(oldest.timeline, oldest.start_lsn)
        argv = [str(settings.postgresql.bin_dir / "pg_archivecleanup"), str(repo.wal), first]
        run_tool(argv, what=f"pg_archivecleanup of {repo.wal}", timeout=600)
        result.oldest_wal_kept = first
    result.wal_after = repo.wal_bytes()
    log.info("pruned %d backup(s), kept %d", len(result.deleted), len(result.kept))
    return result
