"""`backup verify ID`: checksums first, then a real restore into a throwaway instance that must
start and answer queries. The outcome is recorded with the backup (`backup list`)."""

from __future__ import annotations

import os
from pathlib import Path

from psycopg import sql

from videodb.backup_repo import BackupInfo, BackupRepo, now_iso, repo_for, tree_size
from videodb.backups.copying import copy_tree, remove_tree
from videodb.backups.guards import require_space
from videodb.backups.instance import throwaway_instance
from videodb.backups.logical import file_sha256
from videodb.backups.progress import Meter, Progress, quiet, size
from videodb.backups.videos import check_copies
from videodb.config import Settings
from videodb.errors import ClusterError
from videodb.layout import ServiceUser, StateLayout, service_user
from videodb.runner import LONG_TOOL_S, run_tool, tail


class CorruptBackupError(ClusterError):
    """A backup failed its checksums or its restore test."""


def check_physical(settings: Settings, path: Path, user: ServiceUser) -> None:
    """pg_verifybackup: every file against the manifest's checksums, and the WAL it needs."""
    if not (path / "backup_manifest").is_file():
        raise CorruptBackupError(f"{path} has no backup_manifest; it is not a complete base backup")
    argv = [str(settings.postgresql.bin_dir / "pg_verifybackup"), "--quiet", str(path)]
    result = run_tool(
        argv, what=f"pg_verifybackup of {path}", timeout=LONG_TOOL_S, user=user, check=False
    )
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        shown = "; ".join(lines[:5]) + (f" (and {len(lines) - 5} more)" if len(lines) > 5 else "")
        raise CorruptBackupError(f"pg_verifybackup found problems in {path}: {shown}")


def check_logical(settings: Settings, info: BackupInfo, path: Path) -> None:
    if not path.is_file():
        raise CorruptBackupError(f"dump file {path} is missing")
    actual = file_sha256(path)
    if info.sha256 and actual != info.sha256:
        raise CorruptBackupError(
            f"{path} has changed since it was written: SHA-256 {actual}, recorded {info.sha256}"
        )
    argv = [str(settings.postgresql.bin_dir / "pg_restore"), "--list", str(path)]
    result = run_tool(argv, what=f"pg_restore --list {path}", timeout=300, check=False)
    if result.returncode != 0:
        raise CorruptBackupError(f"pg_restore cannot read {path}: {tail(result.stderr)}")


def check_checksums(settings: Settings, repo: BackupRepo, info: BackupInfo) -> None:
    user = service_user()
    path = repo.data_path(info)
    if info.kind == "physical":
        check_physical(settings, path, user)
    else:
        check_logical(settings, info, path)


def _restore_test_physical(
    settings: Settings, layout: StateLayout, path: Path, progress: Progress
) -> str:
    user = service_user()
    require_space(layout.data, tree_size(path), f"a restore test of {path.name}")
    work = layout.data / f"verify-{path.name}"
    remove_tree(work)
    work.mkdir(mode=0o700)
    try:
        progress("copying the backup for a restore test")
        copy_tree(path, work / "data", user, Meter(progress, "copied", tree_size(path)))
        progress("starting it (crash recovery to the end of the backup)")
        with throwaway_instance(settings, work / "data", work, user) as instance:
            with instance.connect() as conn:
                dbs = conn.execute("SELECT count(*) FROM pg_database").fetchone()
            with instance.connect(settings.database.name) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
                ).fetchone()
        assert dbs is not None and row is not None
        return f"a copy started and answered: {dbs[0]} databases, {row[0]} tables in " + str(
            settings.database.name
        )
    finally:
        remove_tree(work)


def _restore_test_logical(
    settings: Settings, layout: StateLayout, info: BackupInfo, path: Path, progress: Progress
) -> str:
    user = service_user()
    work = layout.data / f"verify-{info.id}"
    remove_tree(work)
    work.mkdir(mode=0o700)
    try:
        if not user.is_current:
            os.chown(work, user.uid, user.gid)
        progress("creating a throwaway instance (initdb)")
        initdb = [
            str(settings.postgresql.bin_dir / "initdb"),
            f"--pgdata={work / 'data'}",
            f"--username={settings.database.superuser}",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        ]
        run_tool(initdb, what="initdb for the restore test", timeout=300, user=user)
        dbname = info.database or settings.database.name
        with throwaway_instance(settings, work / "data", work, user) as instance:
            with instance.connect() as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
            progress(f"restoring the dump into it (pg_restore, {size(info.size_bytes)})")
            restore = [
                str(settings.postgresql.bin_dir / "pg_restore"),
                f"--host={instance.socket_dir}",
                f"--port={instance.port}",
                f"--username={settings.database.superuser}",
                f"--dbname={dbname}",
                "--no-owner",
                "--no-privileges",
                "--exit-on-error",
                str(path),
            ]
            done = run_tool(
                restore, what=f"pg_restore of {path}", timeout=LONG_TOOL_S, user=user, check=False
            )
            if done.returncode != 0:
                raise CorruptBackupError(f"pg_restore of {path} failed: {tail(done.stderr)}")
            with instance.connect(dbname) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
                ).fetchone()
        assert row is not None
        return f"restored into a throwaway instance: {row[0]} tables in {dbname} answered"
    finally:
        remove_tree(work)


def verify_backup(
    settings: Settings, layout: StateLayout, backup_id: str, *, progress: Progress = quiet
) -> BackupInfo:
    repo = repo_for(settings, layout)
    info = repo.get(backup_id)
    path = repo.data_path(info)
    try:
        progress(f"checking {backup_id}'s checksums")
        check_checksums(settings, repo, info)
        progress(f"reading the {len(info.extra.get('videos', []))} video copies it names")
        copies = check_copies(repo, info)
        if info.kind == "physical":
            detail = _restore_test_physical(settings, layout, path, progress)
        else:
            detail = _restore_test_logical(settings, layout, info, path, progress)
    except ClusterError as exc:
        info.verified, info.verified_at, info.verify_detail = False, now_iso(), str(exc)
        repo.save(info)
        raise CorruptBackupError(f"backup {backup_id} failed verification: {exc}") from exc
    info.verified, info.verified_at = True, now_iso()
    info.verify_detail = f"checksums ok; {copies}; {detail}"
    repo.save(info)
    return info
