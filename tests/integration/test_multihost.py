"""The platform across hosts, on simulated hosts (network namespaces): 3 database/etcd hosts and
1 application host, synchronous replication. Each test leaves the cluster healthy for the next."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.integration.multihost import (
    APP_HOST,
    DB_HOSTS,
    Observations,
    SimCluster,
    Workload,
    leader,
    lost_writes,
    prepare_ledger,
    sim_cluster_lifecycle,
    wait_healthy,
)
from tests.integration.simhosts import netns_available
from videodb.config import NodeSpec
from videodb.waiting import wait_for

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


def _host_of(sim: SimCluster, node: NodeSpec) -> str:
    assert node.host is not None
    return node.host


def _read_servers_up(seen: Observations, after: float) -> list[tuple[float, tuple[str, ...]]]:
    with seen.lock:
        return [(t, up) for t, up in seen.read_up if t > after]


def test_an_isolated_replica_leaves_the_read_port_and_is_never_promoted(sim: SimCluster) -> None:
    wait_healthy(sim)
    prepare_ledger(sim)
    primary = leader(sim)
    assert primary is not None
    replica = next(n for n in sim.settings().nodes if n.name != primary.name)
    rhost = _host_of(sim, replica)
    h = sim.settings().haproxy
    bound = 5.0 + h.fall * h.check_interval_ms / 1000  # wal_receiver_timeout + fall x inter
    with Workload(sim) as load:
        cut_at = time.monotonic()
        sim.net.isolate(rhost)
        try:
            wait_for(
                lambda: any(
                    replica.name not in up for _, up in _read_servers_up(load.seen, cut_at)
                ),
                timeout=3 * bound,
                what=f"{replica.name} out of the read port",
            )
            left_s = (
                min(t for t, up in _read_servers_up(load.seen, cut_at) if replica.name not in up)
                - cut_at
            )
            # Held past Patroni's ttl: a replica that could be promoted would have been by now.
            time.sleep(sim.settings().patroni.timings()[0] + 2)
            assert leader(sim) == primary
        finally:
            sim.net.heal(rhost)
        wait_healthy(sim)
        healed_at = time.monotonic()
        wait_for(
            lambda: any(replica.name in up for _, up in _read_servers_up(load.seen, healed_at)),
            timeout=60,
            what=f"{replica.name} back in the read port",
        )
    seen = load.seen
    print(f"\nisolated replica left the read port after {left_s:.2f} s (bound {bound:.1f} s)")
    assert not seen.writable_after(replica.name, cut_at - 60), "the replica accepted writes"
    assert seen.most_write_servers_up() <= 1
    assert seen.stalest_read_s() <= bound + 1.0, seen.stalest_read_s()
    assert lost_writes(sim, [wid for wid, _, _ in seen.acked]) == []
