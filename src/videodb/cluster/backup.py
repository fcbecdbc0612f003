"""`backup-video`: a logical dump (pg_dump, custom format) of the application database."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from videodb.cluster.patroni_api import PatroniAPI
from videodb.config import Settings
from videodb.errors import ClusterError
from videodb.layout import StateLayout


@dataclass
class BackupResult:
    path: Path
    size_bytes: int
    source: str
    elapsed_s: float


def dump_database(settings: Settings, layout: StateLayout) -> BackupResult:
    primary = PatroniAPI(settings).leader()
    if primary is None:
        raise ClusterError("no running primary to back up from; see 'platform.sh status'")
    layout.backups.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = layout.backups / f"{settings.database.name}-{stamp}.dump"
    partial = target.with_suffix(".dump.partial")
    argv = [
        str(settings.postgresql.bin_dir / "pg_dump"),
        "--format=custom",
        f"--host={settings.listen_host}",
        f"--port={primary.port}",
        f"--username={settings.database.superuser}",
        f"--dbname={settings.database.name}",
        f"--file={partial}",
        "--no-password",
    ]
    env = {**os.environ, "PGPASSFILE": str(layout.pgpass())}
    began = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise ClusterError(
            f"pg_dump of {settings.database.name} from {primary.name} failed "
            f"(exit {result.returncode}): {result.stderr.strip()}"
        )
    partial.rename(target)
    return BackupResult(target, target.stat().st_size, primary.name, time.monotonic() - began)
