"""Automatic failover with synchronous replication, proven by the drill on a real cluster.

One cluster for this module, started with `replication = "sync"`. The tests run in file order
and each leaves the cluster healthy (one master, streaming replicas) for the next.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.integration.harness import RunningCluster, cluster_lifecycle
from videodb.cluster.drill import node_down
from videodb.cluster.haproxy_admin import set_server_state
from videodb.cluster.health import check_health
from videodb.cluster.patroni_api import PatroniAPI, Role
from videodb.errors import ClusterError, TimeoutExpired
from videodb.waiting import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sync_cluster(request: pytest.FixtureRequest) -> Iterator[RunningCluster]:
    with cluster_lifecycle(request, "videodb-ha-", '[patroni]\nreplication = "sync"\n') as c:
        yield c


def roles(cluster: RunningCluster) -> dict[str, Role]:
    return {m.name: m.role for m in PatroniAPI(cluster.settings).members()}


def wait_healthy(cluster: RunningCluster, timeout: float = 90) -> None:
    wait_for(
        lambda: check_health(cluster.settings).healthy,
        timeout=timeout,
        what="a healthy cluster",
    )


def drill(cluster: RunningCluster, fault: str, *extra: str) -> dict[str, Any]:
    result = cluster.cli("failover-test", "--fault", fault, *extra, "--json", timeout=400)
    assert result.rc in (0, 1), result
    report: dict[str, Any] = json.loads(result.stdout)
    (run,) = report["runs"]
    assert run["acknowledged"] > 20, run
    assert run["lost_acknowledged"] == 0, run
    assert run["two_primaries"] is False, run
    assert run["healed"] is True, run
    assert run["replication"] == "sync"
    assert result.rc == 0
    return dict(run)


def test_sync_mode_is_applied(sync_cluster: RunningCluster) -> None:
    config = PatroniAPI(sync_cluster.settings).cluster_config()
    assert config is not None
    assert config["synchronous_mode"] is True and config["synchronous_mode_strict"] is False
    assert (config["ttl"], config["loop_wait"], config["retry_timeout"]) == (20, 1, 3)
    report = sync_cluster.cli_json("replication-status")
    assert report["replicas"][0]["sync_state"] == "sync"


def test_wait_sync_reports_caught_up(sync_cluster: RunningCluster) -> None:
    report = sync_cluster.cli_json("wait-sync", "--timeout", "10")
    assert report["synced"] is True
    assert report["lag_bytes"] == {"postgres-video-slave": 0}


def test_drill_postgres_crash_loses_nothing(sync_cluster: RunningCluster) -> None:
    run = drill(sync_cluster, "kill-postgres")
    assert run["write_downtime_s"] > 0


def test_drill_switchover_swaps_roles(sync_cluster: RunningCluster) -> None:
    run = drill(sync_cluster, "switchover")
    assert run["new_primary"] != run["old_primary"]
    assert roles(sync_cluster)[run["old_primary"]] is Role.REPLICA


def test_drill_frozen_master_accepts_no_write_and_rejoins(sync_cluster: RunningCluster) -> None:
    run = drill(sync_cluster, "freeze")
    assert run["new_primary"] != run["old_primary"]  # promoted while the old master was frozen
    old = next(
        m for m in PatroniAPI(sync_cluster.settings).members() if m.name == run["old_primary"]
    )
    assert old.role is Role.REPLICA and old.replication_state == "streaming"


def test_drill_node_loss_fails_over(sync_cluster: RunningCluster) -> None:
    run = drill(sync_cluster, "kill-node")
    assert run["new_primary"] != run["old_primary"]
    assert roles(sync_cluster)[run["old_primary"]] is Role.REPLICA


def test_manual_mode_promotes_nothing_until_promote_slave(sync_cluster: RunningCluster) -> None:
    c = sync_cluster
    assert c.cli("maintenance", "on").rc == 0
    api = PatroniAPI(c.settings)
    master = api.leader()
    assert master is not None
    other = next(n.name for n in c.settings.nodes if n.name != master.name)
    ttl = c.settings.patroni.timings()[0]
    try:
        with node_down(c.layout, master.name):
            # Long past the leader lock's ttl, no node may take over by itself.
            def someone_promoted() -> bool:
                return any(m.role is Role.PRIMARY and m.state == "running" for m in api.members())

            with pytest.raises(TimeoutExpired):
                wait_for(someone_promoted, timeout=ttl + 5, what="a promotion")
            promoted = c.cli_json("promote-slave", "--force", "--to", other)
            assert promoted["new_primary"] == other
            with c.app_connect(c.write_port) as conn:
                row = conn.execute("SELECT inet_server_port()").fetchone()
            assert row == (c.settings.node(other).port,)
    finally:
        assert c.cli("maintenance", "off").rc == 0
    wait_healthy(c)
    assert roles(c) == {master.name: Role.REPLICA, other: Role.PRIMARY}


def test_wait_sync_exits_1_and_shows_the_lag_when_a_replica_is_gone(
    sync_cluster: RunningCluster,
) -> None:
    c = sync_cluster
    replica = next(n for n, r in roles(c).items() if r is Role.REPLICA)
    c.supervisor().stop_program(replica)
    try:
        with c.app_connect(c.write_port) as conn:  # WAL the replica has not seen
            conn.execute("CREATE TABLE IF NOT EXISTS wait_sync_check (id int)")
        report = c.cli_json("wait-sync", "--timeout", "2", expect_rc=1)
        assert report["synced"] is False
        assert report["lag_bytes"] == {replica: None}
        text = c.cli("wait-sync", "--timeout", "1")
        assert text.rc == 1 and f"{replica}: not connected" in text.stderr
    finally:
        c.supervisor().start_program(replica)
    wait_healthy(c)


def test_rejoin_reclones_a_replica(sync_cluster: RunningCluster) -> None:
    replica = next(n for n, r in roles(sync_cluster).items() if r is Role.REPLICA)
    result = sync_cluster.cli("rejoin", replica, timeout=200)
    assert result.rc == 0, result
    wait_healthy(sync_cluster)


def test_three_node_cluster_survives_master_loss(sync_cluster: RunningCluster) -> None:
    c = sync_cluster
    # Connections open before the HAProxy reload keep working after it.
    with c.app_connect(c.read_port) as reader, c.app_connect(c.write_port) as writer:
        added = c.cli_json("add-replica")
        assert reader.execute("SELECT 1").fetchone() == (1,)
        writer.execute("CREATE TABLE IF NOT EXISTS reload_check (id int)")
    assert added["name"] == "postgres-video-replica-1"
    wait_healthy(sync_cluster)
    report = sync_cluster.cli_json("haproxy-stats")
    read_up = {
        s["server"] for s in report["servers"] if s["backend"] == "postgres_read" and s["up"]
    }
    assert len(read_up) == 3
    run = drill(sync_cluster, "kill-node")
    assert run["new_primary"] != run["old_primary"]
    final = roles(sync_cluster)
    assert sorted(final.values()) == [Role.PRIMARY, Role.REPLICA, Role.REPLICA]
    assert final[run["old_primary"]] is Role.REPLICA


def test_remove_replica_drains_without_failed_reads(sync_cluster: RunningCluster) -> None:
    c = sync_cluster
    name = "postgres-video-replica-1"
    with pytest.raises(ClusterError, match="No such server"):  # a refusal is never silent
        set_server_state(c.layout, "postgres_read", "no-such-node", "drain")
    if roles(c).get(name) is Role.PRIMARY:
        c.cli("switchover", check=True, timeout=120)
        wait_healthy(c)
    failures: list[str] = []
    reads = 0
    stop = threading.Event()

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            try:
                with c.app_connect(c.read_port) as conn:
                    conn.execute("SELECT 1").fetchone()
                reads += 1
            except psycopg.Error as exc:
                failures.append(str(exc))
            time.sleep(0.005)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        result = c.cli("remove-replica", name, "--json")
        # Keep reading after the removal, while HAProxy's reloaded workers take over.
        count = reads
        wait_for(lambda: reads >= count + 100, timeout=30, what="reads after removal")
    finally:
        stop.set()
        thread.join(timeout=10)
    assert result.rc == 0, result
    assert failures == []
    assert reads > 100
    assert name not in {n.name for n in c.settings.nodes}
    servers = {s["server"] for s in c.cli_json("haproxy-stats")["servers"]}
    assert name not in servers
    wait_healthy(c)
