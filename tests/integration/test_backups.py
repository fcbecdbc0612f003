"""Backups on a real cluster: continuous WAL archiving, base backups and dumps, verification with a
throwaway restore, point-in-time recovery, restore to the latest write across a failover, damaged
backups refused without harm, pruning.

One cluster for this module (synchronous replication, so that a failover loses no acknowledged
write; no applications). The tests run in file order: restores replace the cluster's data.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.harness import RunningCluster, cluster_lifecycle
from videodb.cluster.drill import node_down
from videodb.cluster.health import check_health
from videodb.cluster.patroni_api import PatroniAPI
from videodb.waiting import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bk(request: pytest.FixtureRequest) -> Iterator[RunningCluster]:
    with cluster_lifecycle(
        request,
        "videodb-bk-",
        '[patroni]\nreplication = "sync"\n',
        apps_toml="autostart = false\n",
    ) as c:
        with c.app_connect(c.write_port) as conn:
            conn.execute(
                "CREATE TABLE events (id int PRIMARY KEY, "
                "committed_at timestamptz NOT NULL DEFAULT clock_timestamp())"
            )
        yield c


def write_rows(c: RunningCluster, ids: range) -> list[int]:
    """One transaction per row, each acknowledged before the next: the ids returned."""
    done = []
    with c.app_connect(c.write_port) as conn:
        for i in ids:
            conn.execute("INSERT INTO events (id) VALUES (%s)", (i,))
            done.append(i)
    return done


def writable(c: RunningCluster) -> bool:
    try:
        with c.app_connect(c.write_port) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return False  # HAProxy has not seen the new master yet
    return True


def rows(c: RunningCluster) -> set[int]:
    with c.app_connect(c.write_port) as conn:
        return {int(r[0]) for r in conn.execute("SELECT id FROM events").fetchall()}


def backup(c: RunningCluster, *flags: str) -> dict[str, Any]:
    result = c.cli("backup-video", *flags, "--json", timeout=300)
    assert result.rc == 0, result
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def wait_healthy(c: RunningCluster) -> None:
    wait_for(lambda: check_health(c.settings).healthy, timeout=120, what="a healthy cluster")


def test_backups_are_listed_with_lsns_and_progress(bk: RunningCluster) -> None:
    result = bk.cli("backup-video", "--physical", timeout=300)
    assert result.rc == 0, result
    assert "copied:" in result.stderr and "(100 %)" in result.stderr  # bytes done of total
    dump = backup(bk)
    listing = bk.cli_json("backup", "list")
    kinds = {b["kind"] for b in listing["backups"]}
    assert kinds == {"physical", "logical"}
    base = [b for b in listing["backups"] if b["kind"] == "physical"][-1]  # the one just taken
    with bk.app_connect(bk.write_port) as conn:
        row = conn.execute("SELECT timeline_id FROM pg_control_checkpoint()").fetchone()
    assert base["start_lsn"] and base["end_lsn"] and row is not None
    assert base["timeline"] == row[0]  # the master's timeline when it was taken
    assert base["size_bytes"] > 1_000_000 and base["verified"] is None
    assert Path(dump["path"]).is_file() and dump["sha256"]
    assert listing["wal_bytes"] > 0  # the archive is filling
    archivers = {a["node"]: a for a in listing["archivers"]}
    assert set(archivers) == {n.name for n in bk.settings.nodes}  # every node archives
    assert all(a["reachable"] and not a["failing"] for a in archivers.values()), archivers
    assert archivers["postgres-video-master"]["last_archived_wal"]


def test_verify_restores_each_kind_into_a_throwaway_instance(bk: RunningCluster) -> None:
    taken = [backup(bk, "--physical"), backup(bk)]
    for b in taken:
        verified = bk.cli_json("backup", "verify", b["id"])
        assert verified["verified"] is True, verified
        assert "checksums ok" in verified["verify_detail"]
    listed = {b["id"]: b for b in bk.cli_json("backup", "list")["backups"]}
    assert all(listed[b["id"]]["verified"] is True for b in taken)
    assert check_health(bk.settings).healthy  # the running cluster was not touched


def test_a_damaged_backup_is_refused_and_nothing_is_destroyed(bk: RunningCluster) -> None:
    write_rows(bk, range(1, 11))
    before = rows(bk)
    base = backup(bk, "--physical")
    dump = backup(bk)
    # Flip bytes in the middle of a table file of the base backup, and of the dump.
    path = Path(base["path"])
    victim = max(
        (p for p in (path / "base").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )
    data = bytearray(victim.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 16] = b"\xff" * 16
    victim.write_bytes(bytes(data))
    dump_path = Path(dump["path"])
    dump_bytes = bytearray(dump_path.read_bytes())
    dump_bytes[len(dump_bytes) // 2] ^= 0xFF
    dump_path.write_bytes(bytes(dump_bytes))

    for b, expect in ((base, "pg_verifybackup found problems"), (dump, "has changed")):
        verify = bk.cli("backup", "verify", b["id"])
        assert verify.rc == 1 and expect in verify.stderr, verify
        restore = bk.cli("restore", b["id"], "--force", timeout=300)
        assert restore.rc != 0 and expect in restore.stderr, restore
    listed = {b["id"]: b for b in bk.cli_json("backup", "list")["backups"]}
    assert listed[base["id"]]["verified"] is False
    assert rows(bk) == before
    assert check_health(bk.settings).healthy
    assert not list(bk.layout.data.glob("restore-*"))  # no staging left behind


def test_a_target_the_archive_cannot_reach_changes_nothing(bk: RunningCluster) -> None:
    # From a master that was a replica before: Patroni left empty recovery_target_* lines in
    # its postgresql.conf, which a recovery to a target must not trip over.
    assert bk.cli("switchover", timeout=120).rc == 0
    wait_healthy(bk)
    before = rows(bk)
    base = backup(bk, "--physical")
    beyond = bk.cli("restore", base["id"], "--lsn", "FF/0", "--force", timeout=300)
    assert beyond.rc != 0
    assert "does not reach the target" in beyond.stderr and "nothing was changed" in beyond.stderr
    early = bk.cli("restore", base["id"], "--time", "2000-01-01T00:00:00+00:00", "--force")
    assert early.rc == 2 and "cannot be recovered to an earlier time" in early.stderr, early
    both = bk.cli("restore", base["id"], "--latest", "--lsn", "0/1", "--force")
    assert both.rc == 2 and "at most one of" in both.stderr
    assert rows(bk) == before
    assert check_health(bk.settings).healthy
    assert not list(bk.layout.data.glob("restore-*"))


def test_logical_restore_puts_the_dump_back_and_sets_the_old_database_aside(
    bk: RunningCluster,
) -> None:
    dump = backup(bk)
    expected = rows(bk)
    write_rows(bk, range(1000, 1010))
    asked = bk.cli("restore", dump["id"])  # no --force, and no one to say yes
    assert asked.rc != 0 and "Restore dump" in asked.stdout + asked.stderr
    assert rows(bk) == expected | set(range(1000, 1010))
    restored = bk.cli_json("restore", dump["id"], "--force")
    assert restored["restored_to"] == bk.settings.database.name
    assert restored["set_aside"].startswith(f"{bk.settings.database.name}__before_restore_")
    assert rows(bk) == expected
    with bk.app_connect(bk.write_port) as conn:  # the application role may still connect
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (len(expected),)


def server_clock(cluster: RunningCluster) -> datetime:
    with cluster.app_connect(cluster.write_port) as conn:
        row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    assert isinstance(row[0], datetime)
    return row[0]


def test_point_in_time_recovery_finds_exactly_the_rows_committed_up_to_t(
    bk: RunningCluster,
) -> None:
    backup(bk, "--physical")
    first = write_rows(bk, range(2000, 2050))
    # T from the master's own clock, read after the first rows committed: they are before it,
    # and the second rows, committed once its clock has moved on, are after it.
    target = server_clock(bk)
    wait_for(lambda: server_clock(bk) > target, timeout=5, what="the master's clock past T")
    second = write_rows(bk, range(3000, 3050))
    kept_before = rows(bk) - set(second)
    assert set(first) <= kept_before
    result = bk.cli("restore", "latest", "--time", target.isoformat(), "--force", timeout=400)
    assert result.rc == 0, result
    assert "recovering to time" in result.stderr and "copied:" in result.stderr  # progress
    assert rows(bk) == kept_before, "the restore must hold exactly the rows committed up to T"
    wait_healthy(bk)
    with bk.app_connect(bk.write_port) as conn:  # and it takes writes as the new master
        conn.execute("INSERT INTO events (id) VALUES (4000)")


def test_restore_to_latest_finds_every_acknowledged_row_across_a_failover(
    bk: RunningCluster,
) -> None:
    base = backup(bk, "--physical")
    before_failover = write_rows(bk, range(5000, 5100))
    api = PatroniAPI(bk.settings)
    master = api.leader()
    assert master is not None
    with node_down(bk.layout, master.name):
        wait_for(
            lambda: (leader := api.leader()) is not None and leader.name != master.name,
            timeout=90,
            what="a new master",
        )
        wait_for(lambda: writable(bk), timeout=30, what="the write port on the new master")
    after_failover = write_rows(bk, range(6000, 6100))
    wait_healthy(bk)
    acknowledged = rows(bk)
    assert set(before_failover) | set(after_failover) <= acknowledged
    result = bk.cli("restore", base["id"], "--latest", "--force", "--json", timeout=400)
    assert result.rc == 0, result
    assert rows(bk) == acknowledged
    wait_healthy(bk)


def test_prune_keeps_the_newest_and_the_wal_they_need(bk: RunningCluster) -> None:
    for k in range(2):
        write_rows(bk, range(7000 + 10 * k, 7005 + 10 * k))
        backup(bk, "--physical")
        backup(bk)
    before = bk.cli_json("backup", "list")
    pruned = bk.cli_json("backup", "prune", "--keep", "1")
    after = bk.cli_json("backup", "list")
    assert [b["kind"] for b in after["backups"]].count("physical") == 1
    assert [b["kind"] for b in after["backups"]].count("logical") == 1
    assert len(pruned["deleted"]) == len(before["backups"]) - 2
    assert pruned["wal_after"] < pruned["wal_before"]
    kept = next(b for b in after["backups"] if b["kind"] == "physical")
    assert bk.cli_json("backup", "verify", kept["id"])["verified"] is True
    bad = bk.cli("backup", "prune", "--keep", "0")
    assert bad.rc == 2 and "keep at least 1" in bad.stderr
