"""patronictl's everyday verbs on a real cluster (the session's): list, history, show-config,
edit-config (validated; reloaded, or pending a restart), restart (one node, or those pending,
the master after a switchover) and reload."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.harness import RunningCluster
from videodb.waiting import wait_for

pytestmark = pytest.mark.integration


def show(cluster: RunningCluster, port: int, name: str) -> str:
    with cluster.app_connect(port) as conn:
        row = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
    assert row is not None
    return str(row[0])


def started_at(cluster: RunningCluster, port: int) -> Any:
    with cluster.app_connect(port) as conn:
        row = conn.execute("SELECT pg_postmaster_start_time()").fetchone()
    assert row is not None
    return row[0]


def test_list_history_and_show_config(cluster: RunningCluster) -> None:
    found = cluster.cli_json("list")
    by_name = {m["name"]: m for m in found}
    master, slave = (n.name for n in cluster.settings.nodes)
    assert set(by_name) == {master, slave}
    assert by_name[master]["role"] == "leader" and by_name[master]["state"] == "running"
    assert by_name[slave]["role"] in ("replica", "sync_standby")
    assert by_name[slave]["state"] == "streaming"
    assert by_name[master]["timeline"] == by_name[slave]["timeline"]
    assert not any(m["pending_restart"] for m in found)
    table = cluster.cli("list", check=True).stdout
    assert master in table and "leader" in table

    before = cluster.cli_json("history")
    assert cluster.cli("switchover", "--to", slave, timeout=120).rc == 0

    # The new leader writes the history into etcd at its next loop or two.
    def grown() -> list[dict[str, Any]] | None:
        found: list[dict[str, Any]] = cluster.cli_json("history")
        return found if len(found) > len(before) else None

    after = wait_for(grown, timeout=30, what="the switchover in the history")
    assert len(after) == len(before) + 1
    newest = after[-1]
    assert newest["new_leader"] == slave and newest["at"], newest
    assert newest["timeline"] == by_name[master]["timeline"]  # the timeline it ended

    config = cluster.cli_json("show-config")
    assert config["ttl"] >= 20 and "parameters" in config["postgresql"]
    assert "loop_wait:" in cluster.cli("show-config", check=True).stdout


REFUSED = [
    ("no_such_key=1", "not a dynamic setting"),
    ("loop_wait=often", "whole number"),
    ("postgresql.parameters.no_such_parameter=1", "no such parameter"),
    ("postgresql.parameters.work_mem=plenty", "refused"),
    ("postgresql.parameters.max_connections=5000000", "between"),
    ("postgresql.parameters.wal_level=everything", "one of"),
    # the config file's, which each node's own Patroni file holds over the dynamic one
    ("postgresql.parameters.shared_buffers=128MB", "change it in the config file"),
    ("postgresql.parameters.log_connections=off", "change it in the config file"),
]


def test_edit_config_refuses_bad_input_and_changes_nothing(cluster: RunningCluster) -> None:
    before = cluster.cli_json("show-config")
    for assignment, message in REFUSED:
        refused = cluster.cli("edit-config", "loop_wait=1", assignment)
        assert refused.rc == 2 and message in refused.stderr, (assignment, refused)
    assert cluster.cli_json("show-config") == before


def test_edit_config_reloads_or_flags_and_restart_pending_applies(
    cluster: RunningCluster,
) -> None:
    master, slave = (n.name for n in cluster.settings.nodes)
    try:
        reloaded = cluster.cli_json("edit-config", "postgresql.parameters.work_mem=7MB")
        assert reloaded["pending_restart"] == []
        assert show(cluster, cluster.master, "work_mem") == "7MB"

        flagged = cluster.cli_json("edit-config", "postgresql.parameters.max_connections=120")
        assert sorted(flagged["pending_restart"]) == sorted([master, slave])
        assert all(m["pending_restart"] for m in cluster.cli_json("list"))
        assert show(cluster, cluster.master, "max_connections") != "120"

        began = {p: started_at(cluster, p) for p in (cluster.master, cluster.slave)}
        history = len(cluster.cli_json("history"))
        done = cluster.cli_json("restart", "--pending", "--switchover", expect_rc=None)
        assert sorted(done["restarted"]) == sorted([master, slave]), done
        for port in (cluster.master, cluster.slave):
            assert show(cluster, port, "max_connections") == "120"
            assert started_at(cluster, port) > began[port]
        assert not any(m["pending_restart"] for m in cluster.cli_json("list"))
        # The master handed over before its restart: one switchover more, no failover.
        wait_for(
            lambda: len(cluster.cli_json("history")) == history + 1,
            timeout=30,
            what="the switchover in the history",
        )

        one = started_at(cluster, cluster.slave)
        restarted = cluster.cli_json("restart", slave)
        assert restarted["restarted"] == [slave]
        assert started_at(cluster, cluster.slave) > one
        assert cluster.cli_json("reload", "--all")["reloaded"] == [master, slave]
        unknown = cluster.cli("restart", "no-such-node")
        assert unknown.rc == 2 and "no node named 'no-such-node'" in unknown.stderr, unknown
    finally:
        cluster.cli(
            "edit-config",
            "postgresql.parameters.work_mem=",
            "postgresql.parameters.max_connections=",
            check=True,
        )
        cluster.cli("restart", "--pending", "--switchover", check=True, timeout=300)
