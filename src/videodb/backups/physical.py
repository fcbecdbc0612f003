"""`backup-video --physical`: a base backup (pg_basebackup, plain format, its WAL streamed in,
a backup_manifest with checksums) of the current master into the repository."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess

from videodb.backup_repo import BackupInfo, new_id, now_iso, ready_repo, tree_size
from videodb.backups.progress import Meter, Progress, quiet
from videodb.cluster.patroni_api import PatroniAPI
from videodb.config import Settings
from videodb.errors import ClusterError
from videodb.layout import StateLayout, as_user, service_user, tls_files
from videodb.runner import LONG_TOOL_S, deadline, tool_env
from videodb.secrets import ClusterSecrets

log = logging.getLogger(__name__)

_PROGRESS = re.compile(rb"(\d+)/(\d+) kB")


def run_with_progress(argv: list[str], meter: Meter) -> tuple[int, str]:
    """Run a pg_basebackup-like program; feed "N/M kB" from its stderr to the meter."""
    process = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=tool_env()
    )
    assert process.stderr is not None
    tail = b""
    with process.stderr, deadline(process, argv[0].rsplit("/", 1)[-1], LONG_TOOL_S):
        while chunk := os.read(process.stderr.fileno(), 4096):
            tail = (tail + chunk)[-4000:]
            found = _PROGRESS.findall(chunk)
            if found:
                done, total = found[-1]
                meter.update(int(done) * 1024, int(total) * 1024)
        code = process.wait()
    lines = [ln.strip() for ln in re.split(rb"[\r\n]", tail) if ln.strip()]
    messages = [ln.decode(errors="replace") for ln in lines if not _PROGRESS.search(ln)]
    return code, "; ".join(messages[-4:])


def take_base_backup(
    settings: Settings,
    layout: StateLayout,
    secrets: ClusterSecrets,
    *,
    progress: Progress = quiet,
) -> BackupInfo:
    primary = PatroniAPI(settings).require_leader("to back up from")
    user = service_user()
    repo = ready_repo(settings, layout, user)
    backup_id = new_id("physical")
    target = repo.base / backup_id
    tls = tls_files(layout)
    # The replication role's client certificate (it has no password), the server verified.
    conninfo = (
        f"host={settings.node_address(primary)} port={primary.port} "
        f"user={settings.database.replication_user} sslmode=verify-full "
        f"sslrootcert={tls.ca} sslcert={tls.replicator_cert} sslkey={tls.replicator_key}"
    )
    argv = [
        str(settings.postgresql.bin_dir / "pg_basebackup"),
        f"--dbname={conninfo}",
        f"--pgdata={target}",
        "--format=plain",
        "--wal-method=stream",
        "--checkpoint=fast",
        "--progress",
        "--manifest-checksums=CRC32C",
        f"--label=videodb {backup_id}",
        "--no-password",
    ]
    started = now_iso()
    progress(f"base backup {backup_id} from {primary.name} (pg_basebackup, WAL streamed in)")
    meter = Meter(progress, "copied", None)
    try:
        code, messages = run_with_progress(as_user(user, argv), meter)
    except BaseException:  # its deadline, or an interrupt: keep no half-copied backup
        shutil.rmtree(target, ignore_errors=True)
        raise
    if code != 0:
        shutil.rmtree(target, ignore_errors=True)
        raise ClusterError(
            f"pg_basebackup from {primary.name} failed (exit {code}): {messages or 'no message'};"
            " nothing was kept"
        )
    total = tree_size(target)  # with the WAL streamed in, which the estimate leaves out
    meter.update(total, total, force=True)
    manifest = json.loads((target / "backup_manifest").read_text(encoding="utf-8"))
    ranges = manifest["WAL-Ranges"]
    info = BackupInfo(
        id=backup_id,
        kind="physical",
        started_at=started,
        finished_at=now_iso(),
        size_bytes=tree_size(target),
        source=primary.name,
        timeline=int(ranges[-1]["Timeline"]),
        start_lsn=str(ranges[0]["Start-LSN"]),
        end_lsn=str(ranges[-1]["End-LSN"]),
    )
    repo.save(info)
    log.info("base backup %s from %s: %d bytes", info.id, info.source, info.size_bytes)
    return info
