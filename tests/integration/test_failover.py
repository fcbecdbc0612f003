"""Automatic failover with synchronous replication, proven by the drill on a real cluster.

One cluster for this module, started with `replication = "sync"`. The tests run in file order
and each leaves the cluster healthy (one master, streaming replicas) for the next.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.integration.harness import RunningCluster, cluster_lifecycle
from tests.media import make_video
from videodb.cluster.drill import node_down
from videodb.cluster.haproxy_admin import set_server_state
from videodb.cluster.health import check_health
from videodb.cluster.patroni_api import PatroniAPI, Role
from videodb.cluster.postmaster import postmaster_pid
from videodb.cluster.topology import extra_nodes
from videodb.errors import ClusterError, TimeoutExpired
from videodb.waiting import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sync_cluster(request: pytest.FixtureRequest) -> Iterator[RunningCluster]:
    with cluster_lifecycle(request, "videodb-ha-", '[patroni]\nreplication = "sync"\n') as c:
        yield c


@pytest.fixture(autouse=True)
def two_healthy_nodes(sync_cluster: RunningCluster) -> None:
    """Each test starts from the same cluster, whatever ran before: failover on, the replicas
    add-replica made removed, both configured nodes healthy with a synchronous standby."""
    c = sync_cluster
    if (PatroniAPI(c.settings).cluster_config() or {}).get("pause"):
        assert c.cli("maintenance", "off").rc == 0
    wait_healthy(c)
    for extra in extra_nodes(c.layout):
        if roles(c).get(extra.name) is Role.PRIMARY:
            assert c.cli("switchover", "--to", c.settings.nodes[0].name, timeout=120).rc == 0
            wait_healthy(c)
        removed = c.cli("remove-replica", extra.name, "--drain-timeout", "5", timeout=120)
        assert removed.rc == 0, removed
    wait_healthy(c)


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
    # the write port routes only to a writable primary: no write reached a server in recovery
    assert run["read_only_writes"] == 0, run
    assert run["replication"] == "sync" and run["unprotected_s"] is not None
    assert result.rc == 0
    return dict(run)


def test_sync_mode_is_applied(sync_cluster: RunningCluster) -> None:
    config = PatroniAPI(sync_cluster.settings).cluster_config()
    assert config is not None
    assert config["synchronous_mode"] is True and config["synchronous_mode_strict"] is False
    assert (config["ttl"], config["loop_wait"], config["retry_timeout"]) == (20, 1, 3)
    report = sync_cluster.cli_json("replication-status")
    assert [r["sync_state"] for r in report["replicas"]] == ["sync"]


def test_wait_sync_reports_caught_up(sync_cluster: RunningCluster) -> None:
    report = sync_cluster.cli_json("wait-sync", "--timeout", "10")
    replica = next(n for n, r in roles(sync_cluster).items() if r is Role.REPLICA)
    assert report["synced"] is True
    assert report["lag_bytes"] == {replica: 0}


def test_drill_postgres_crash_loses_nothing(sync_cluster: RunningCluster) -> None:
    leader = PatroniAPI(sync_cluster.settings).require_leader("to crash")
    before = postmaster_pid(sync_cluster.layout.node_data(leader.name))
    run = drill(sync_cluster, "kill-postgres")
    assert run["old_primary"] == leader.name
    # The crash was real: the master's postgres is a new process now (restarted in place by
    # Patroni, or the other node promoted).
    after = postmaster_pid(sync_cluster.layout.node_data(run["new_primary"]))
    assert before is not None and after is not None and after != before


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
    # non-strict sync: the new master acknowledged commits with no synchronous standby until the
    # old one rejoined, and the drill says for how long
    assert run["unprotected_s"] > 0, run
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
    # non-strict sync: the new master acknowledged commits with no synchronous standby until the
    # old one rejoined, and the drill says for how long
    assert run["unprotected_s"] > 0, run
    final = roles(sync_cluster)
    assert sorted(final.values()) == [Role.PRIMARY, Role.REPLICA, Role.REPLICA]
    assert final[run["old_primary"]] is Role.REPLICA


def test_remove_replica_drains_without_failed_reads(sync_cluster: RunningCluster) -> None:
    c = sync_cluster
    with pytest.raises(ClusterError, match="No such server"):  # a refusal is never silent
        set_server_state(c.layout, "postgres_read", "no-such-node", "drain")
    name = c.cli_json("add-replica")["name"]
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


def _multipart(title: str, data: bytes, boundary: str) -> tuple[bytes, bytes, bytes]:
    """A multipart/form-data body in three pieces: head, file bytes, tail."""
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="title"\r\n\r\n{title}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="v.mp4"\r\n'
        "Content-Type: video/mp4\r\n\r\n"
    ).encode()
    return head, data, f"\r\n--{boundary}--\r\n".encode()


def test_upload_through_a_master_failover_gives_one_video(
    sync_cluster: RunningCluster, tmp_path: Path
) -> None:
    """The master dies while an upload is half sent. The client, which cannot know whether its
    upload was recorded, retries with the same Idempotency-Key until it gets an answer: there is
    exactly one video, every answer names it, and its bytes stream back intact."""
    c = sync_cluster
    data = make_video(tmp_path / "failover.mp4", seconds=3).read_bytes()
    title = f"failover {uuid.uuid4().hex[:8]}"
    boundary = uuid.uuid4().hex
    head, _, tail = _multipart(title, data, boundary)
    headers = {
        "Content-Type": f"multipart/form-data; boundary={boundary}",
        "Idempotency-Key": f"failover-{uuid.uuid4()}",
    }
    url = f"{c.app_url('upload')}/api/videos"
    halfway = threading.Event()
    resume = threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield head
        yield data[: len(data) // 2]
        halfway.set()
        resume.wait(timeout=120)
        yield data[len(data) // 2 :]
        yield tail

    answers: list[httpx.Response | Exception] = []

    def post(body: bytes | Iterator[bytes]) -> httpx.Response | Exception:
        try:
            with httpx.Client(timeout=httpx.Timeout(10, read=15)) as client:
                return client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:  # a timeout: the client does not know what happened
            return exc

    first = threading.Thread(target=lambda: answers.append(post(slow_body())), daemon=True)
    first.start()
    assert halfway.wait(timeout=30)
    api = PatroniAPI(c.settings)
    master = api.leader()
    assert master is not None
    with node_down(c.layout, master.name):
        resume.set()  # the rest of the file arrives; its write meets a dead master

        def new_leader() -> bool:
            leader = api.leader()
            return leader is not None and leader.name != master.name

        wait_for(new_leader, timeout=90, what="a new master")
    first.join(timeout=120)

    def retried() -> httpx.Response | None:
        answer = post(head + data + tail)
        answers.append(answer)
        if isinstance(answer, httpx.Response) and answer.status_code == 201:
            return answer
        return None

    final = wait_for(retried, timeout=120, interval=1, what="the upload accepted")
    accepted = [a for a in answers if isinstance(a, httpx.Response) and a.status_code == 201]
    refused = [a for a in answers if isinstance(a, httpx.Response) and a.status_code != 201]
    assert all(a.status_code == 503 for a in refused), [a.text for a in refused]
    assert {a.json()["id"] for a in accepted} == {final.json()["id"]}
    with c.app_connect(c.write_port) as conn:
        row = conn.execute("SELECT count(*) FROM videos WHERE title = %s", (title,)).fetchone()
    assert row == (1,), f"{row} videos for one upload; answers: {answers}"
    again = post(head + data + tail)  # once more, after the dust settled: the stored answer
    assert isinstance(again, httpx.Response) and again.status_code == 201
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.json()["id"] == final.json()["id"]
    stream = c.app_url("streaming") + final.json()["stream_url"]
    with httpx.Client(timeout=30) as client:
        got = client.get(
            stream, headers={"X-Consistency-Token": final.headers["X-Consistency-Token"]}
        )
    assert got.status_code == 200 and got.content == data
    wait_healthy(c)
