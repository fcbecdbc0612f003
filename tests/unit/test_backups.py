"""Backup pieces that need no server: the archive command's rules, WAL file names, progress."""

from __future__ import annotations

import shlex
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from videodb.backup_repo import BackupInfo, BackupRepo, new_id
from videodb.backups.guards import require_space
from videodb.backups.progress import Meter, size
from videodb.backups.prune import wal_file_name
from videodb.backups.restore import RecoveryTarget, drop_recovery_targets, recovery_parameters
from videodb.errors import ClusterError
from videodb.layout import StateLayout
from videodb.wal_archive import archive_parameters, archive_script, restore_command


def archive(script: Path, src: Path, name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(script), str(src), name], capture_output=True, text=True, check=False
    )


def test_archive_command_is_idempotent_and_refuses_to_overwrite(tmp_path: Path) -> None:
    repo = BackupRepo(tmp_path / "repo")
    repo.ensure()
    script = tmp_path / "archive-wal.sh"
    script.write_text(archive_script(repo))
    segment = tmp_path / "000000010000000000000003"
    segment.write_bytes(b"A" * 1000)
    name = segment.name
    assert archive(script, segment, name).returncode == 0
    assert (repo.wal / name).read_bytes() == b"A" * 1000
    assert archive(script, segment, name).returncode == 0  # another node, same bytes
    segment.write_bytes(b"B" * 1000)
    refused = archive(script, segment, name)
    assert refused.returncode == 1 and "refusing to overwrite" in refused.stderr
    assert (repo.wal / name).read_bytes() == b"A" * 1000
    # The end of a timeline at two different promotions: both are kept.
    partial = tmp_path / f"{name}.partial"
    partial.write_bytes(b"first")
    assert archive(script, partial, partial.name).returncode == 0
    partial.write_bytes(b"second")
    assert archive(script, partial, partial.name).returncode == 0
    kept = sorted(p.read_bytes() for p in repo.wal.glob(f"{name}.partial*"))
    assert kept == [b"first", b"second"]
    assert not list(repo.wal.glob(".*.tmp"))


def test_archive_settings() -> None:
    params = archive_parameters(Path("/s/conf/archive-wal.sh"), 60)
    assert params == {
        "archive_mode": "always",
        "archive_command": "/s/conf/archive-wal.sh %p %f",
        "archive_timeout": 60,
    }
    assert restore_command(BackupRepo(Path("/b"))) == "cp /b/wal/%f %p"


def test_wal_file_names() -> None:
    assert wal_file_name(1, "0/4000028") == "000000010000000000000004"
    assert wal_file_name(3, "1/FF000000") == "0000000300000001000000FF"
    assert wal_file_name(2, "2/0") == "000000020000000200000000"


def test_repo_lists_in_time_order_and_ignores_junk(tmp_path: Path) -> None:
    repo = BackupRepo(tmp_path)
    repo.ensure()
    ids = [new_id("physical"), new_id("logical")]
    for backup_id in ids:
        kind = "physical" if backup_id.endswith("-base") else "logical"
        repo.save(BackupInfo(backup_id, kind, "s", "f", 1, "n"))  # type: ignore[arg-type]
    (repo.base / "junk.json").write_text("{not json")
    assert [i.id for i in repo.all()] == sorted(ids)
    assert repo.latest("physical").id == ids[0]


def test_progress_lines_and_sizes() -> None:
    lines: list[str] = []
    meter = Meter(lines.append, "copied", 2_000_000, interval_s=3600)
    meter.update(500_000)  # the first update prints; then at most once an hour
    meter.update(1_000_000)
    meter.finish()
    assert lines == ["copied: 500.0 kB of 2.0 MB (25 %)", "copied: 1.0 MB of 2.0 MB (50 %)"]
    assert size(812) == "812 B" and size(3_500_000_000) == "3.5 GB"


def test_recovery_targets() -> None:
    when = datetime(2026, 11, 26, 10, 15, tzinfo=UTC)
    assert RecoveryTarget(time=when).parameters() == {
        "recovery_target_time": "2026-11-26T10:15:00+00:00"
    }
    assert RecoveryTarget(lsn="0/5000000").parameters() == {"recovery_target_lsn": "0/5000000"}
    assert RecoveryTarget().parameters() == {}
    assert "latest" in RecoveryTarget().describe()


def test_not_enough_space_is_refused_before_copying(tmp_path: Path) -> None:
    with pytest.raises(ClusterError, match="not enough free space for restoring x"):
        require_space(tmp_path, 10**18, "restoring x")
    require_space(tmp_path, 1, "restoring x")


def test_recovery_quotes_the_archive_command_like_every_node_does(tmp_path: Path) -> None:
    """A state directory with a space in its path must not break recovery's archiving."""
    state = tmp_path / "state dir"
    layout = StateLayout(state)
    repo = BackupRepo(state / "backups")
    params = recovery_parameters(layout, repo, RecoveryTarget())
    script = layout.archive_script()
    assert params["archive_command"] == f"'{script}' %p %f"
    assert params["archive_command"] == archive_parameters(script, 60)["archive_command"]
    assert params["restore_command"] == f"cp '{repo.wal}'/%f %p"
    # Split as PostgreSQL's shell will: the script and two arguments, whatever the path holds.
    assert shlex.split(params["archive_command"]) == [str(script), "%p", "%f"]


def test_a_copied_replicas_empty_recovery_targets_are_dropped(tmp_path: Path) -> None:
    """Patroni leaves `recovery_target_time = ''` and the like in a former replica's
    postgresql.conf; with a target on the command line PostgreSQL would refuse to start."""
    conf = tmp_path / "postgresql.conf"
    conf.write_text(
        "include 'postgresql.base.conf'\n"
        "archive_mode = 'always'\n"
        "# recovery.conf\n"
        "recovery_target = ''\n"
        "recovery_target_lsn = ''\n"
        "recovery_target_time = ''\n"
        "  recovery_target_timeline = 'latest'\n"
        "#recovery_target_xid = ''\n"
        "restore_command = 'cp x y'\n"
    )
    dropped = drop_recovery_targets(tmp_path)
    assert len(dropped) == 4
    assert conf.read_text() == (
        "include 'postgresql.base.conf'\n"
        "archive_mode = 'always'\n"
        "# recovery.conf\n"
        "#recovery_target_xid = ''\n"
        "restore_command = 'cp x y'\n"
    )
    assert drop_recovery_targets(tmp_path / "none") == []  # no file: nothing to do
