"""`restore`: a logical dump into a database, or a base backup recovered to a time, an LSN or the
end of the WAL archive, as the new master that the other nodes then clone from.

Both prepare the restored copy beside what runs (a temporary database; a throwaway instance doing
the point-in-time recovery) and swap it in only once it is complete. A backup that fails its
checksums, or a recovery that cannot reach its target, changes nothing. What is replaced is set
aside, not deleted: the old database renamed, the old data directories moved under
data/before-restore-<time>/.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from psycopg import sql

from videodb.backup_repo import BackupInfo, BackupRepo, repo_for
from videodb.backups.copying import copy_tree, remove_tree
from videodb.backups.guards import require_space
from videodb.backups.instance import throwaway_instance
from videodb.backups.progress import Meter, Progress, quiet, size
from videodb.backups.verify import check_checksums
from videodb.cluster import apps, lifecycle
from videodb.cluster.patroni_api import PatroniAPI
from videodb.cluster.pg import connect_superuser, ensure_application_database
from videodb.config import Settings
from videodb.errors import ClusterError, ConfigError
from videodb.layout import StateLayout, service_user
from videodb.platform_lock import platform_lock
from videodb.runner import LONG_TOOL_S, ToolError, deadline, tool_env
from videodb.secrets import ClusterSecrets, load_secrets
from videodb.waiting import wait_for
from videodb.wal_archive import archive_command, restore_command

log = logging.getLogger(__name__)


@dataclass
class RecoveryTarget:
    """Where a physical restore stops: a time, an LSN, or (neither) the end of the archive."""

    time: datetime | None = None
    lsn: str | None = None

    def describe(self) -> str:
        if self.time is not None:
            return f"time {self.time.isoformat()}"
        return f"LSN {self.lsn}" if self.lsn else "the end of the WAL archive (latest)"

    def parameters(self) -> dict[str, str]:
        if self.time is not None:
            return {"recovery_target_time": self.time.isoformat()}
        if self.lsn is not None:
            return {"recovery_target_lsn": self.lsn}
        return {}


@dataclass
class RestoreResult:
    backup_id: str
    kind: str
    target: str
    elapsed_s: float
    restored_to: str  # the database, or the node that became the master
    reached: str = ""  # physical: the LSN and time the recovery ended at
    set_aside: str | None = None  # where the replaced data went


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


# -- logical -----------------------------------------------------------------------------------


def restore_logical(
    settings: Settings,
    layout: StateLayout,
    info: BackupInfo,
    database: str | None = None,
    *,
    progress: Progress = quiet,
) -> RestoreResult:
    """Restore a dump into `database` (default: the one dumped) through a temporary database."""
    with platform_lock(layout.root):
        return _restore_logical(settings, layout, info, database, progress)


def _restore_logical(
    settings: Settings,
    layout: StateLayout,
    info: BackupInfo,
    database: str | None,
    progress: Progress,
) -> RestoreResult:
    began = time.monotonic()
    repo = repo_for(settings, layout)
    secrets = load_secrets(layout)
    progress(f"checking {info.id}'s checksum")
    check_checksums(settings, repo, info)
    primary = PatroniAPI(settings).require_leader("to restore into")
    target = database or info.database or settings.database.name
    staging = f"{target}__restoring"
    owner = settings.database.app_user
    with connect_superuser(settings, secrets, primary) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(staging)))
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(staging), sql.Identifier(owner)
            )
        )
    path = repo.data_path(info)
    argv = [
        str(settings.postgresql.bin_dir / "pg_restore"),
        f"--host={settings.node_address(primary)}",
        f"--port={primary.port}",
        f"--username={settings.database.superuser}",
        f"--dbname={staging}",
        "--exit-on-error",
        "--no-password",
    ]
    env = tool_env(PGPASSFILE=str(layout.pgpass()))
    progress(f"restoring {info.id} into a temporary database {staging} on {primary.name}")
    meter = Meter(progress, "restored", info.size_bytes)
    # Its messages go to a file, not a pipe: a pipe nobody reads while we feed stdin could fill up
    # and stall both processes.
    with tempfile.TemporaryFile() as messages:
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, stderr=messages, env=env)
        assert process.stdin is not None
        code: int | str
        try:
            with deadline(process, f"pg_restore of {info.id}", LONG_TOOL_S):
                try:
                    with path.open("rb") as f:
                        while chunk := f.read(1 << 20):
                            process.stdin.write(chunk)
                            meter.add(len(chunk))
                    process.stdin.close()
                except BrokenPipeError:
                    pass  # pg_restore stopped early: its exit code and message say why
                code = process.wait()
        except ToolError as exc:
            code = f"stopped: {exc}"
        finally:
            if not process.stdin.closed:
                with contextlib.suppress(BrokenPipeError):
                    process.stdin.close()
        messages.seek(0)
        errors = messages.read().decode(errors="replace").strip()
    if code != 0:
        with connect_superuser(settings, secrets, primary) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(staging)))
        raise ClusterError(
            f"pg_restore of {info.id} failed (exit {code}): {errors}; the temporary database "
            f"was dropped and {target} is unchanged"
        )
    meter.finish()
    aside = None
    with connect_superuser(settings, secrets, primary) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target,)).fetchone()
        if exists:
            aside = f"{target}__before_restore_{_stamp()}".lower()
            progress(f"swapping: {target} becomes {aside} (its connections are closed)")
            conn.execute(
                sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(target))
            )
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (target,),
            )
            conn.execute(
                sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                    sql.Identifier(target), sql.Identifier(aside)
                )
            )
        conn.execute(
            sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                sql.Identifier(staging), sql.Identifier(target)
            )
        )
    if target == settings.database.name:
        ensure_application_database(settings, secrets, primary)  # its grants and functions
    log.warning("restored dump %s into %s; the old database is %s", info.id, target, aside)
    return RestoreResult(
        info.id, "logical", "the dump", time.monotonic() - began, target, set_aside=aside
    )


# -- physical ----------------------------------------------------------------------------------


_RECOVERY_TARGET_LINE = re.compile(r"^\s*recovery_target\w*\s*=", re.MULTILINE)


def drop_recovery_targets(data_dir: Path) -> list[str]:
    """Remove recovery_target* lines from a copied data directory's postgresql.conf.

    Patroni writes `recovery_target_lsn = ''`, `recovery_target_time = ''`... into the
    postgresql.conf of every node that has run as a replica, so a base backup of a master that
    was promoted carries them. With a target given on the command line, PostgreSQL then stops
    with "multiple recovery targets specified": the target must come from one place only.
    Returns the lines removed.
    """
    conf = data_dir / "postgresql.conf"
    try:
        text = conf.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    lines = text.splitlines(keepends=True)
    dropped = [ln.strip() for ln in lines if _RECOVERY_TARGET_LINE.match(ln)]
    if dropped:
        conf.write_text(
            "".join(ln for ln in lines if not _RECOVERY_TARGET_LINE.match(ln)), encoding="utf-8"
        )
    return dropped


def recovery_parameters(
    layout: StateLayout, repo: BackupRepo, target: RecoveryTarget
) -> dict[str, str]:
    """The throwaway instance's settings: replay from the archive to `target`, then promote."""
    return {
        "restore_command": restore_command(repo),
        "recovery_target_timeline": "latest",
        "recovery_target_action": "promote",
        "recovery_target_inclusive": "on",
        "archive_mode": "on",
        "archive_command": archive_command(layout.archive_script()),
        **target.parameters(),
    }


def _archive_current_wal(settings: Settings, secrets: ClusterSecrets, progress: Progress) -> None:
    """Close the master's current WAL segment and wait until it is archived, so that a restore
    to the latest point finds every write acknowledged so far."""
    primary = PatroniAPI(settings).leader()
    if primary is None:
        progress("no running master: restoring from what the archive already holds")
        return
    with connect_superuser(settings, secrets, primary) as conn:
        row = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()
        assert row is not None
        segment = str(row[0])
        progress(f"archiving the master's current WAL segment {segment}")

        def archived() -> bool:
            got = conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()
            return got is not None and got[0] is not None and str(got[0]) >= segment

        wait_for(
            archived,
            timeout=60,
            what=f"WAL segment {segment} archived",
            hint="see pg_stat_archiver and the master's log ('platform.sh logs NODE')",
        )


def _recover(
    settings: Settings,
    layout: StateLayout,
    info: BackupInfo,
    target: RecoveryTarget,
    staging: Path,
    progress: Progress,
) -> str:
    """Copy the backup and run the point-in-time recovery in a throwaway instance. Returns what
    was reached. The instance archives what it writes (its new timeline's history and WAL)."""
    repo = repo_for(settings, layout)
    user = service_user()
    progress(f"copying {info.id} ({size(info.size_bytes)}) for the recovery")
    meter = Meter(progress, "copied", info.size_bytes)
    copy_tree(repo.data_path(info), staging / "data", user, meter)
    drop_recovery_targets(staging / "data")
    signal_file = staging / "data" / "recovery.signal"
    signal_file.touch()
    if not user.is_current:
        os.chown(signal_file, user.uid, user.gid)
    parameters = recovery_parameters(layout, repo, target)
    progress(f"recovering to {target.describe()} (replaying archived WAL)")

    def replaying(lsn: str) -> None:
        progress(f"replayed up to {lsn}")

    with throwaway_instance(
        settings,
        staging / "data",
        staging,
        user,
        parameters=parameters,
        ready="promoted",
        on_wait=_every(2.0, replaying),
    ) as instance:
        with instance.connect() as conn:
            conn.execute("CHECKPOINT")
            row = conn.execute(
                "SELECT pg_current_wal_lsn()::text, "
                "(SELECT timeline_id FROM pg_control_checkpoint())"
            ).fetchone()
        assert row is not None
        return f"LSN {row[0]}, new timeline {row[1]}"


def _every(interval: float, fn: Progress) -> Progress:
    last = [0.0]

    def throttled(message: str) -> None:
        if time.monotonic() - last[0] >= interval:
            last[0] = time.monotonic()
            fn(message)

    return throttled


def restore_physical(
    settings: Settings,
    layout: StateLayout,
    info: BackupInfo,
    target: RecoveryTarget,
    *,
    progress: Progress = quiet,
) -> RestoreResult:
    """Recover `info` to `target` beside the running cluster, then make it the first node's data,
    set the old data aside, and start the cluster: the other nodes clone from the new master."""
    if info.kind != "physical":
        raise ConfigError(
            f"{info.id} is a logical dump; point-in-time recovery needs a base backup"
        )
    if target.time is not None and target.time < datetime.fromisoformat(info.started_at):
        raise ConfigError(
            f"{info.id} started at {info.started_at}; it cannot be recovered to an earlier "
            f"time ({target.time.isoformat()}): choose an older base backup"
        )
    with platform_lock(layout.root):
        return _restore_physical(settings, layout, info, target, progress)


def _restore_physical(
    settings: Settings,
    layout: StateLayout,
    info: BackupInfo,
    target: RecoveryTarget,
    progress: Progress,
) -> RestoreResult:
    began = time.monotonic()
    repo = repo_for(settings, layout)
    progress(f"checking {info.id}'s checksums (pg_verifybackup)")
    check_checksums(settings, repo, info)
    require_space(layout.data, info.size_bytes, f"restoring {info.id}")
    running = lifecycle.is_running(layout)
    if running:
        _archive_current_wal(settings, load_secrets(layout), progress)
    staging = layout.data / f"restore-{info.id}"
    remove_tree(staging)
    staging.mkdir(mode=0o700)
    user = service_user()
    if not user.is_current:
        os.chown(staging, user.uid, user.gid)
    try:
        reached = _recover(settings, layout, info, target, staging, progress)
    except ClusterError as exc:
        remove_tree(staging)
        hint = ""
        if "recovery ended before configured recovery target was reached" in str(exc):
            hint = " (the WAL archive does not reach the target: is it later than the last write?)"
        raise ClusterError(
            f"recovery of {info.id} to {target.describe()} failed{hint}; nothing was changed: {exc}"
        ) from exc
    except BaseException:
        remove_tree(staging)
        raise
    master = settings.nodes[0]
    aside = layout.data / f"before-restore-{_stamp()}"
    progress(f"recovered ({reached}); stopping the platform to swap the data in")
    lifecycle.stop(settings, layout)
    moved = _set_aside(settings, layout, aside)
    os.replace(staging / "data", layout.node_data(master.name))
    remove_tree(staging)
    try:
        progress(f"starting: {master.name} is the master, the other nodes clone from it")
        lifecycle.start(settings, layout, progress=progress)
        if settings.apps.autostart:
            apps.start_apps(settings, layout, progress=progress)
    except Exception as exc:
        progress("the restored cluster did not start: putting the previous data back")
        lifecycle.stop(settings, layout)
        failed = aside / "restored-but-failed"
        os.replace(layout.node_data(master.name), failed)
        for original, moved_to in moved:
            os.replace(moved_to, original)
        if running:
            lifecycle.start(settings, layout, progress=progress)
        log.error("restore of %s failed to start (%s); the previous data is back", info.id, exc)
        raise ClusterError(
            f"the restored data did not start ({exc}); the previous data is back in place"
            f"{' and running' if running else ''}; the restored copy is in {failed}"
        ) from exc
    log.warning(
        "restored base backup %s to %s (reached %s) as %s; the replaced data is in %s",
        info.id,
        target.describe(),
        reached,
        master.name,
        aside,
    )
    return RestoreResult(
        info.id,
        "physical",
        target.describe(),
        time.monotonic() - began,
        master.name,
        reached=reached,
        set_aside=str(aside),
    )


def _set_aside(settings: Settings, layout: StateLayout, aside: Path) -> list[tuple[Path, Path]]:
    """Move every node's data and etcd's (the old cluster's state) under `aside`."""
    aside.mkdir(mode=0o700)
    moved = []
    for path, name in [
        *((layout.node_data(n.name), n.name) for n in settings.nodes),
        (layout.etcd_data(), "etcd"),
    ]:
        if path.exists():
            os.replace(path, aside / name)
            moved.append((path, aside / name))
    return moved
