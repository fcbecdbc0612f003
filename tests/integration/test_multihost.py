"""The platform across hosts, on simulated hosts (network namespaces): 3 database/etcd hosts and
1 application host, synchronous replication. Each test leaves the cluster healthy for the next."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.multihost import APP_HOST, DB_HOSTS, SimCluster, sim_cluster_lifecycle
from tests.integration.simhosts import netns_available

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(netns_available() is not None, reason=str(netns_available())),
]


@pytest.fixture(scope="module")
def sim(request: pytest.FixtureRequest) -> Iterator[SimCluster]:
    with sim_cluster_lifecycle(request) as cluster:
        yield cluster


def test_any_host_shows_the_whole_cluster_with_each_process_host(sim: SimCluster) -> None:
    for host in (*DB_HOSTS, APP_HOST):
        status = sim.cli_json(host, "status")
        assert status["healthy"], status
        where = {(s["name"], s["host"]) for s in status["services"]}
        assert {("etcd", h) for h in DB_HOSTS} <= where
        assert {(f"postgres-video-{i}", h) for i, h in enumerate(DB_HOSTS, 1)} <= where
        assert {("haproxy-postgres", APP_HOST), ("upload", APP_HOST)} <= where
        roles = sorted(s["role"] for s in status["services"] if s["name"].startswith("postgres-"))
        assert roles == ["primary", "replica", "replica"]
        # This host's processes come from its supervisord (a pid); the others' over the network.
        local = [s for s in status["services"] if s["host"] == host]
        assert local and all(s["pid"] for s in local), local
        assert all(s["state"] == "REMOTE" for s in status["services"] if s["host"] != host)
    stats = sim.cli_json(DB_HOSTS[0], "haproxy-stats")
    assert {s["host"] for s in stats["servers"]} == {APP_HOST}
    replication = sim.cli_json(DB_HOSTS[1], "replication-status")
    assert len(replication["replicas"]) == 2, replication
    assert sorted(r["sync_state"] for r in replication["replicas"]) == ["async", "sync"], (
        replication
    )
