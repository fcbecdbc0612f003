"""`backup-video`: the guide's logical dump (pg_dump, custom format) of the application database,
into the repository with its SHA-256."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
from pathlib import Path

from videodb.backup_repo import BackupInfo, new_id, now_iso, ready_repo
from videodb.backups.progress import Meter, Progress, quiet, size
from videodb.cluster.patroni_api import PatroniAPI
from videodb.cluster.pg import connect_superuser
from videodb.config import Settings
from videodb.errors import ClusterError
from videodb.layout import StateLayout, service_user
from videodb.runner import LONG_TOOL_S, deadline, tool_env
from videodb.secrets import ClusterSecrets

log = logging.getLogger(__name__)

TABLE_SIZES = """
SELECT format('%s.%s', n.nspname, c.relname), pg_table_size(c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%'
"""
_TABLE_STARTS = re.compile(r'dumping contents of table "([^"]+)"')


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
    primary = PatroniAPI(settings).require_leader("to back up from")
    user = service_user()
    repo = ready_repo(settings, layout, user)
    db = settings.database.name
    with connect_superuser(settings, secrets, primary, dbname=db) as conn:
        tables = {
            str(name): int(str(nbytes)) for name, nbytes in conn.execute(TABLE_SIZES).fetchall()
        }
    backup_id = new_id("logical")
    target = repo.dumps / f"{backup_id}.dump"
    partial = target.with_suffix(".dump.partial")
    argv = [
        str(settings.postgresql.bin_dir / "pg_dump"),
        "--format=custom",
        f"--host={settings.node_address(primary)}",
        f"--port={primary.port}",
        f"--username={settings.database.superuser}",
        f"--dbname={db}",
        f"--file={partial}",
        "--no-password",
        "--verbose",  # names each table as it starts: the progress below
    ]
    env = tool_env(PGPASSFILE=str(layout.pgpass()))
    started = now_iso()
    progress(f"logical dump {backup_id} of {db} from {primary.name} (pg_dump, custom format)")
    # Progress in table bytes: a table counts as dumped once pg_dump starts the next one. What
    # is measured is the tables' size on disk, not the (compressed) dump: the label says so.
    meter = Meter(progress, "table data dumped (size on disk)", sum(tables.values()))
    process = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    assert process.stderr is not None
    done, current = 0, 0
    errors: list[str] = []
    last: list[str] = []
    try:
        with deadline(process, f"pg_dump of {db}", LONG_TOOL_S):
            for raw in process.stderr:
                line = raw.decode(errors="replace").rstrip()
                last = [*last[-4:], line]
                starting = _TABLE_STARTS.search(line)
                if starting:
                    done += current
                    current = tables.get(starting.group(1), 0)
                    meter.update(done)
                elif "error" in line.lower() or "fatal" in line.lower():
                    errors.append(line)
            process.wait()
    except BaseException:  # its deadline, or an interrupt: keep no partial dump
        if process.poll() is None:
            process.kill()
            process.wait()
        partial.unlink(missing_ok=True)
        raise
    finally:
        process.stderr.close()
    stderr = "; ".join(errors[-5:] or last)
    if process.returncode != 0:
        partial.unlink(missing_ok=True)
        raise ClusterError(
            f"pg_dump of {db} from {primary.name} failed (exit {process.returncode}): "
            f"{stderr.strip()}; nothing was kept"
        )
    meter.update(sum(tables.values()), force=True)
    os.replace(partial, target)
    progress(f"dump file written: {size(target.stat().st_size)} (compressed) in {target}")
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
    log.info("dump %s from %s: %d bytes", info.id, info.source, info.size_bytes)
    return info
