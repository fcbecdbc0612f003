"""`backup-video`: the guide's logical dump (pg_dump, custom format) of the application database,
into the repository with its SHA-256."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

from videodb.backups.progress import Meter, Progress, quiet, size
from videodb.backups.repo import BackupInfo, new_id, now_iso, repo_for
from videodb.cluster.patroni_api import PatroniAPI
from videodb.cluster.pg import connect_superuser
from videodb.config import Settings
from videodb.errors import ClusterError
from videodb.layout import StateLayout, service_user
from videodb.secrets import ClusterSecrets


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def dump_database(
    settings: Settings,
    layout: StateLayout,
    secrets: ClusterSecrets,
    *,
    progress: Progress = quiet,
) -> BackupInfo:
    primary = PatroniAPI(settings).leader()
    if primary is None:
        raise ClusterError("no running primary to back up from; see 'platform.sh status'")
    user = service_user()
    repo = repo_for(settings, layout)
    repo.ensure(None if user.is_current else user.uid, None if user.is_current else user.gid)
    db = settings.database.name
    with connect_superuser(settings, secrets, primary) as conn:
        row = conn.execute("SELECT pg_database_size(%s)", (db,)).fetchone()
    estimate = int(str(row[0])) if row else None
    backup_id = new_id("logical")
    target = repo.dumps / f"{backup_id}.dump"
    partial = target.with_suffix(".dump.partial")
    argv = [
        str(settings.postgresql.bin_dir / "pg_dump"),
        "--format=custom",
        f"--host={settings.listen_host}",
        f"--port={primary.port}",
        f"--username={settings.database.superuser}",
        f"--dbname={db}",
        f"--file={partial}",
        "--no-password",
    ]
    env = {**os.environ, "PGPASSFILE": str(layout.pgpass())}
    started = now_iso()
    progress(f"logical dump {backup_id} of {db} from {primary.name} (pg_dump, custom format)")
    # A dump is compressed: the database's size is only an upper bound of the file's.
    meter = Meter(progress, f"written (database is {size(estimate or 0)})", None)
    process = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    while process.poll() is None:
        if partial.exists():
            meter.update(partial.stat().st_size)
        time.sleep(0.2)
    stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
    if process.returncode != 0:
        partial.unlink(missing_ok=True)
        raise ClusterError(
            f"pg_dump of {db} from {primary.name} failed (exit {process.returncode}): "
            f"{stderr.strip()}; nothing was kept"
        )
    meter.update(partial.stat().st_size, force=True)
    os.replace(partial, target)
    info = BackupInfo(
        id=backup_id,
        kind="logical",
        started_at=started,
        finished_at=now_iso(),
        size_bytes=target.stat().st_size,
        source=primary.name,
        database=db,
        sha256=file_sha256(target),
    )
    repo.save(info)
    return info
