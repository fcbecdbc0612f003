"""The guide's Emergency Procedures on a real cluster: slave failure, then promote-slave.

They change the cluster's roles; the conftest puts the guide's roles back before each test.
"""

from __future__ import annotations

import pytest

from tests.integration.harness import RunningCluster
from videodb.cluster.haproxy_stats import fetch_server_status
from videodb.cluster.health import check_health
from videodb.cluster.postmaster import postmaster_pid
from videodb.cluster.render import READ_BACKEND
from videodb.waiting import wait_for

pytestmark = pytest.mark.integration

SLAVE = "postgres-video-slave"


def _read_ports(cluster: RunningCluster, count: int) -> list[int]:
    ports = []
    for _ in range(count):
        with cluster.app_connect(cluster.read_port) as conn:
            row = conn.execute("SELECT inet_server_port()").fetchone()
            assert row is not None
            ports.append(int(row[0]))
    return ports


def test_slave_failure_reads_continue_from_master(cluster: RunningCluster) -> None:
    supervisor = cluster.supervisor()
    supervisor.stop_program(SLAVE)  # Patroni stops its postgres on the way out
    try:
        assert postmaster_pid(cluster.layout.node_data(SLAVE)) is None

        def slave_marked_down() -> bool:
            servers = fetch_server_status(cluster.settings)
            return any(
                s.backend == READ_BACKEND and s.server == SLAVE and not s.up for s in servers
            )

        wait_for(
            slave_marked_down, timeout=15, what="HAProxy marking the slave down in the read backend"
        )
        # Every read succeeds, and all of them are served by the master.
        assert set(_read_ports(cluster, 10)) == {cluster.master}

        status = cluster.cli("status", "--json")
        assert status.rc == 1
        report = cluster.cli_json("status", expect_rc=1)
        slave = next(s for s in report["services"] if s["name"] == SLAVE)
        assert slave["healthy"] is False and slave["state"] == "STOPPED"

        replication = cluster.cli("replication-status")
        assert replication.rc == 1
        assert "postgres-video-slave: down" in replication.stderr
    finally:
        supervisor.start_program(SLAVE)
    wait_for(
        lambda: check_health(cluster.settings).healthy,
        timeout=60,
        what="the slave streaming again",
    )
    # Both serve reads again. Right after a server comes back, HAProxy's round robin may send it
    # a run of new connections in a row, so read until both are seen (or fail after 40).
    seen: set[int] = set()
    for _ in range(40):
        seen |= set(_read_ports(cluster, 1))
        if seen == {cluster.master, cluster.slave}:
            break
    assert seen == {cluster.master, cluster.slave}


def test_promote_slave_moves_the_write_port_without_config_change(cluster: RunningCluster) -> None:
    haproxy_cfg = cluster.layout.haproxy_config().read_text()
    result = cluster.cli_json("promote-slave", "--force")
    assert result["new_primary"] == SLAVE
    assert result["old_primary"] == "postgres-video-master"
    with cluster.app_connect(cluster.write_port) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS after_promotion (id int)")
        conn.execute("INSERT INTO after_promotion VALUES (1)")
        row = conn.execute("SELECT inet_server_port(), pg_is_in_recovery()").fetchone()
    assert row == (cluster.slave, False)
    assert cluster.layout.haproxy_config().read_text() == haproxy_cfg

    def new_roles() -> bool:
        report = cluster.cli_json("status", expect_rc=None)
        roles = {s["name"]: s["role"] for s in report["services"] if s["role"] != "app"}
        return report["healthy"] and roles == {
            "etcd": "dcs",
            "postgres-video-master": "replica",
            SLAVE: "primary",
            "haproxy-postgres": "proxy",
        }

    wait_for(new_roles, timeout=60, what="the old master rejoining as a replica")
    replication = cluster.cli_json("replication-status")
    assert replication["primary"] == SLAVE
    assert replication["replicas"][0]["name"] == "postgres-video-master"
    assert replication["replicas"][0]["state"] == "streaming"


def test_promote_slave_without_force_asks_and_aborts(cluster: RunningCluster) -> None:
    result = cluster.cli("promote-slave")  # no terminal: refused, and told how to go on
    assert result.rc == 2
    text = " ".join(result.stderr.split())
    assert "Promote" in text and "no terminal to confirm on; pass --force" in text
    assert "Aborted" not in result.stdout + result.stderr
    report = cluster.cli_json("status")
    roles = {s["name"]: s["role"] for s in report["services"]}
    assert (roles["postgres-video-master"], roles[SLAVE]) == ("primary", "replica")  # unchanged
