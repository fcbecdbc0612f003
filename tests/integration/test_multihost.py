"""The platform across hosts, on simulated hosts (network namespaces): 3 database/etcd hosts and
1 application host, synchronous replication. Each test leaves the cluster healthy for the next."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import text

from tests.integration.multihost import (
    APP_HOST,
    DB_HOSTS,
    Observations,
    SimCluster,
    Workload,
    cluster_toml,
    drill_toml,
    leader,
    ledger_digest,
    lost_writes,
    prepare_ledger,
    sim_cluster_lifecycle,
    wait_healthy,
)
from tests.integration.probes import https_status, tls_context
from tests.integration.rotation_load import Load
from tests.integration.simhosts import netns_available
from tests.media import make_video
from videodb import certs
from videodb.cluster.haproxy_stats import fetch_server_status
from videodb.cluster.patroni_api import PatroniAPI
from videodb.cluster.render import READ_BACKEND
from videodb.cluster.supervisor import Supervisor
from videodb.config import NodeSpec
from videodb.db import DataLayer, DataSourceSettings
from videodb.errors import TimeoutExpired
from videodb.layout import tls_files
from videodb.secrets import load_secrets
from videodb.waiting import wait_for

APP2 = "app2"  # the second application host, joined by the last test

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(netns_available() is not None, reason=str(netns_available())),
]


@pytest.fixture(scope="module")
def sim(request: pytest.FixtureRequest) -> Iterator[SimCluster]:
    before = request.session.testsfailed
    with sim_cluster_lifecycle(lambda: request.session.testsfailed > before) as cluster:
        yield cluster


def test_any_host_shows_the_whole_cluster_with_each_process_host(sim: SimCluster) -> None:
    db_hosts = _db_hosts(sim)
    for host in (*db_hosts, APP_HOST):
        status = sim.cli_json(host, "status")
        assert status["healthy"], status
        where = {(s["name"], s["host"]) for s in status["services"]}
        assert {("etcd", h) for h in db_hosts} <= where
        assert {(f"postgres-video-{i}", h) for i, h in enumerate(db_hosts, 1)} <= where
        assert {("haproxy-postgres", APP_HOST), ("upload", APP_HOST)} <= where
        roles = sorted(s["role"] for s in status["services"] if s["name"].startswith("postgres-"))
        assert roles == ["primary"] + ["replica"] * (len(db_hosts) - 1)
        # This host's processes come from its supervisord (a pid); the others' over the network.
        local = [s for s in status["services"] if s["host"] == host]
        assert local and all(s["pid"] for s in local), local
        assert all(s["state"] == "REMOTE" for s in status["services"] if s["host"] != host)
    stats = sim.cli_json(db_hosts[0], "haproxy-stats")
    assert {s["host"] for s in stats["servers"]} == {APP_HOST}

    # Retried: right after an idle spell, PostgreSQL's replay_lag can count the idle time as lag
    # (it interpolates from its last sample before the spell) until the replica's next report.
    def replication_ok() -> Any:
        report = sim.cli_json(db_hosts[1], "replication-status", expect_rc=None)
        return report if report["ok"] else None

    replication = wait_for(
        replication_ok,
        timeout=30,
        what="replication-status ok (every replica streaming within the lag bound)",
    )
    assert len(replication["replicas"]) == len(db_hosts) - 1, replication
    assert sorted(r["sync_state"] for r in replication["replicas"])[-1] == "sync", replication
    placed = {f"postgres-video-{i}": h for i, h in enumerate(db_hosts, 1)}
    assert all(placed[r["name"]] == r["host"] for r in replication["replicas"]), replication
    assert placed[replication["primary"]] == replication["primary_host"]


def test_postgres_admits_only_the_cluster_hosts(sim: SimCluster) -> None:
    """A machine on the same network that the cluster file does not list is refused by pg_hba,
    with the right password; the application host is admitted."""
    outsider = sim.net.hosts.get("outsider") or sim.net.add_host("outsider")
    s = sim.settings()
    node = s.nodes[0]
    address = s.node_address(node)
    db = s.database

    def connect() -> str:
        try:
            with psycopg.connect(
                host=address,
                port=node.port,
                user=db.app_user,
                password=db.app_password.get_secret_value(),
                dbname=db.name,
                connect_timeout=3,
            ):
                return "admitted"
        except psycopg.OperationalError as exc:
            return str(exc)

    refused = sim.call(outsider.name, connect)
    assert f'pg_hba.conf rejects connection for host "{outsider.address}"' in refused, refused
    assert sim.call(APP_HOST, connect) == "admitted"


def _private_copy(source: Path, target: Path) -> Path:
    """libpq and ssl want a key file of the user who reads it (these are the service user's)."""
    shutil.copy(source, target)
    target.chmod(0o600)
    return target


def test_every_link_from_another_host_is_tls_verified_by_the_cluster_ca(
    sim: SimCluster, tmp_path: Path
) -> None:
    """From the application host: plaintext to PostgreSQL, etcd and Patroni's REST API is
    refused, so is a client certificate from another CA; the replication role has no password;
    verify-full works through the write and read ports by the service name."""
    s = sim.settings(APP_HOST)
    db = s.database
    node = s.nodes[0]
    db1 = s.node_address(node)
    files = tls_files(sim.layout(APP_HOST))
    ca = files.ca
    cert = _private_copy(files.cert, tmp_path / "app1.crt")
    key = _private_copy(files.key, tmp_path / "app1.key")
    rcert = _private_copy(files.replicator_cert, tmp_path / "rep.crt")
    rkey = _private_copy(files.replicator_key, tmp_path / "rep.key")
    foreign = certs.issue(certs.new_authority("another CA"), "replicator", dns=[APP_HOST])
    (tmp_path / "f.crt").write_text(foreign.cert_pem)
    fkey = tmp_path / "f.key"
    fkey.write_text(foreign.key_pem)
    fkey.chmod(0o600)
    fcert = tmp_path / "f.crt"
    app = {
        "user": db.app_user,
        "password": db.app_password.get_secret_value(),
        "dbname": db.name,
        "connect_timeout": 3,
    }

    def postgres(**params: Any) -> str:
        try:
            with psycopg.connect(**params) as conn:
                if params.get("replication"):
                    return "admitted"  # a replication connection runs no SQL
                row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                return f"admitted ssl={row.fetchone()}"
        except psycopg.OperationalError as exc:
            return str(exc)

    def probe() -> dict[str, Any]:
        etcd = s.etcd_client_url(s.host_spec(DB_HOSTS[0]))
        api = f"https://{db1}:{node.api_port}"
        replication = {
            "host": db1,
            "port": node.port,
            "user": db.replication_user,
            "dbname": "replication",
            "replication": "true",
            "connect_timeout": 3,
            "sslmode": "verify-full",
            "sslrootcert": str(ca),
        }
        return {
            "pg plaintext": postgres(host=db1, port=node.port, sslmode="disable", **app),
            "pg verify-full": postgres(
                host=db1, port=node.port, sslmode="verify-full", sslrootcert=str(ca), **app
            ),
            "etcd plaintext": https_status(
                etcd.replace("https", "http") + "/health", tls_context(ca)
            ),
            "etcd no cert": https_status(etcd + "/health", tls_context(ca)),
            "etcd other CA": https_status(etcd + "/health", tls_context(ca, fcert, fkey)),
            "etcd ours": https_status(etcd + "/health", tls_context(ca, cert, key)),
            "api plaintext": https_status(
                api.replace("https", "http") + "/patroni", tls_context(ca)
            ),
            "api unsafe no cert": https_status(
                api + "/reload", tls_context(ca), sim_api_password(sim)
            ),
            "api other CA": https_status(api + "/reload", tls_context(ca, fcert, fkey), "x"),
            "replicator passwords": [
                postgres(**replication, password=p)
                for p in ("", sim_api_password(sim), db.app_password.get_secret_value())
            ],
            "replicator other CA": postgres(**replication, sslcert=str(fcert), sslkey=str(fkey)),
            "replicator ours": postgres(**replication, sslcert=str(rcert), sslkey=str(rkey)),
            "write port by name": postgres(
                host=s.postgres_tls_name(),
                hostaddr=s.address,
                port=s.haproxy.write_port,
                sslmode="verify-full",
                sslrootcert=str(ca),
                **app,
            ),
            "read port by name": postgres(
                host=s.postgres_tls_name(),
                hostaddr=s.address,
                port=s.haproxy.read_port,
                sslmode="verify-full",
                sslrootcert=str(ca),
                **app,
            ),
            "write port by address": postgres(
                host=s.address,
                port=s.haproxy.write_port,
                sslmode="verify-full",
                sslrootcert=str(ca),
                **app,
            ),
        }

    seen = sim.call(APP_HOST, probe)
    assert "no encryption" in seen["pg plaintext"], seen
    assert seen["pg verify-full"] == "admitted ssl=(True,)", seen
    for refused in ("etcd plaintext", "etcd no cert", "etcd other CA", "api plaintext"):
        assert seen[refused] != 200, (refused, seen[refused])
    assert str(seen["etcd no cert"]).startswith("refused"), seen
    assert str(seen["etcd other CA"]).startswith("refused"), seen
    assert seen["etcd ours"] == 200, seen
    assert seen["api unsafe no cert"] == 403, seen
    assert str(seen["api other CA"]).startswith("refused"), seen
    for answer in seen["replicator passwords"]:
        assert "certificate" in answer and not answer.startswith("admitted"), seen
    assert not seen["replicator other CA"].startswith("admitted"), seen
    assert seen["replicator ours"].startswith("admitted"), seen
    assert seen["write port by name"] == "admitted ssl=(True,)", seen
    assert seen["read port by name"] == "admitted ssl=(True,)", seen
    # the application host's address is in no PostgreSQL certificate: the name is what works
    assert "does not match host name" in seen["write port by address"], seen


def sim_api_password(sim: SimCluster) -> str:
    return load_secrets(sim.layout(APP_HOST)).api_password


def _primary_and_timeline(sim: SimCluster) -> tuple[str, int | None]:
    members = sim.call(APP_HOST, lambda: PatroniAPI(sim.settings(APP_HOST)).members())
    primaries = [m for m in members if m.role.value == "primary"]
    assert len(primaries) == 1, members
    return primaries[0].name, primaries[0].timeline


def test_direct_routing_from_the_application_host_finds_the_master_and_the_replicas(
    sim: SimCluster,
) -> None:
    """routing = "direct" across hosts: the nodes come from the cluster file, each verified by the
    service name; the writer lands on the master, the reader on a random replica."""
    wait_healthy(sim)
    s = sim.settings(APP_HOST)
    where = text("SELECT inet_server_addr()::text, pg_is_in_recovery()")

    def run() -> tuple[tuple[str, bool], list[tuple[str, bool]]]:
        layer = DataLayer(DataSourceSettings.for_platform(s, routing="direct"))
        try:
            with layer.writer() as unit:
                written = unit.session.execute(where).one()
            reads = []
            for _ in range(12):
                layer.reader_engine.dispose()  # a new connection: libpq picks a host again
                reads.append(layer.read(lambda session: session.execute(where).one()))
            return (str(written[0]), bool(written[1])), [(str(a), bool(r)) for a, r in reads]
        finally:
            layer.dispose()

    (master_address, in_recovery), reads = sim.call(APP_HOST, run)
    master = leader(sim)
    assert master is not None and not in_recovery
    assert master_address.split("/")[0] == s.node_address(master)
    replicas = {s.node_address(n) for n in s.nodes if n.name != master.name}
    assert all(recovering for _, recovering in reads), reads  # prefer-standby
    seen = {address.split("/")[0] for address, _ in reads}
    assert seen <= replicas and len(seen) == len(replicas), (seen, replicas)  # random


def test_replicas_whose_replay_lags_leave_the_read_port_and_the_direct_reader(
    sim: SimCluster,
) -> None:
    """The read port's lag bound (/readiness?lag=16MB across hosts) and the direct reader's
    staleness bound both drop replicas that stopped replaying, while they still stream.

    Replay is held back with recovery_min_apply_delay: Patroni resumes a pg_wal_replay_pause()
    at its next loop (seen here: paused False two seconds later)."""
    wait_healthy(sim)
    s = sim.settings(APP_HOST)
    api = PatroniAPI(s, load_secrets(sim.layout(APP_HOST)).api_password)
    primary = leader(sim)
    assert primary is not None
    replicas = [n for n in s.nodes if n.name != primary.name]

    def delay(value: str | None) -> None:
        parameters = {"postgresql": {"parameters": {"recovery_min_apply_delay": value}}}
        sim.call(APP_HOST, lambda: api.patch_config(parameters))

    def read_up() -> set[str]:
        servers = sim.call(APP_HOST, lambda: fetch_server_status(s))
        return {x.server for x in servers if x.backend == READ_BACKEND and x.up}

    def fill_wal() -> None:  # about 45 MB of WAL, well past the 16 MB bound
        with sim.connect(APP_HOST, s.haproxy.write_port) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS wal_filler (pad text)")
            conn.execute(
                "INSERT INTO wal_filler "
                "SELECT repeat(md5(i::text), 32) FROM generate_series(1, 40000) i"
            )
            conn.execute("TRUNCATE wal_filler")

    def direct_reads() -> set[str]:
        layer = DataLayer(DataSourceSettings.for_platform(s, routing="direct", max_lag_s=1.0))
        where = text("SELECT inet_server_addr()::text")
        try:
            seen = set()
            for _ in range(12):
                layer.reader_engine.dispose()  # a new connection: libpq picks a host again
                seen.add(str(layer.read(lambda session: session.execute(where).scalar_one())))
            return {address.split("/")[0] for address in seen}
        finally:
            layer.dispose()

    assert {n.name for n in replicas} <= read_up()
    delay("10min")
    try:
        time.sleep(2)  # every replica has the setting (Patroni reloads at its next loop)
        sim.call(APP_HOST, fill_wal)
        wait_for(
            lambda: not {n.name for n in replicas} & read_up(),
            timeout=30,
            what="the lagging replicas out of the read port",
        )
        assert read_up() == {primary.name}  # the master still serves reads
        time.sleep(1.5)  # past the direct reader's 1 s bound since the last replayed commit
        # every read lands on a replica, is found too stale, and runs on the master instead
        assert sim.call(APP_HOST, direct_reads) == {s.node_address(primary)}
    finally:
        delay(None)
    wait_for(
        lambda: {n.name for n in replicas} <= read_up(), timeout=60, what="the replicas back in"
    )


# Slow (80-130 s): the default run rotates every credential under load on one host
# (test_tls.py::test_every_rotation_under_load_fails_no_request_and_keeps_the_timeline).
@pytest.mark.slow
def test_rotations_across_hosts_fail_no_request_and_keep_the_timeline(
    sim: SimCluster, tmp_path: Path
) -> None:
    """Certificates on every host, the CA in three phases over every host, then each password,
    while the applications' data layer and HTTP reads run on the application host."""
    table = "mh_rotation_ledger"

    def create() -> None:
        with sim.connect(APP_HOST, sim.settings().haproxy.write_port) as conn:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (id bigserial PRIMARY KEY)")

    sim.call(APP_HOST, create)
    hosts = (*_db_hosts(sim), APP_HOST)
    app_files = tls_files(sim.layout(APP_HOST))
    old_cert = _private_copy(app_files.cert, tmp_path / "old.crt")
    old_key = _private_copy(app_files.key, tmp_path / "old.key")
    before = _primary_and_timeline(sim)
    s = sim.settings(APP_HOST)
    old_app = s.database.app_password.get_secret_value()
    old_super = load_secrets(sim.layout(APP_HOST)).superuser_password
    old_api = sim_api_password(sim)

    def step(*commands: tuple[str, tuple[str, ...]]) -> None:
        load = Load(
            sim.layout(APP_HOST).apps_config(),
            f"http://{s.address}:{s.apps.web_port}/api/videos",
            table,
            inside=lambda: sim.net.inside(APP_HOST),
        )
        with load:
            for host, args in commands:
                result = sim.cli(host, *args, timeout=180)
                assert result.rc == 0, (host, args, result)
            done = load.writes
            wait_for(lambda: load.writes > done + 5, timeout=30, what="writes after it")
        assert load.failures == [], (commands, load.failures[:5])
        assert _primary_and_timeline(sim) == before, commands

    step(*((h, ("rotate", "certs")) for h in hosts))
    for phase in ("trust", "reissue", "finish"):
        step(*((h, ("rotate", "ca", "--phase", phase)) for h in hosts))
    step((APP_HOST, ("rotate", "password", "app")))
    step(
        (DB_HOSTS[0], ("rotate", "password", "superuser")),
        *((h, ("start", "video")) for h in hosts[1:]),
    )
    step(
        (DB_HOSTS[0], ("rotate", "password", "patroni-api")),
        *((h, ("start", "video")) for h in hosts[1:]),
    )
    wait_healthy(sim)

    # Afterwards every old credential is refused, seen from the application host.
    s = sim.settings(APP_HOST)
    ca = app_files.ca
    node = s.nodes[0]
    db1 = s.node_address(node)

    def old_credentials() -> dict[str, Any]:
        def login(user: str, password: str, dbname: str) -> str:
            try:
                with psycopg.connect(
                    host=db1,
                    port=node.port,
                    user=user,
                    password=password,
                    dbname=dbname,
                    sslmode="verify-full",
                    sslrootcert=str(ca),
                    connect_timeout=3,
                ):
                    return "admitted"
            except psycopg.OperationalError as exc:
                return str(exc)

        etcd = s.etcd_client_url(s.host_spec(DB_HOSTS[0])) + "/health"
        api = f"https://{db1}:{node.api_port}/reload"
        new_client = tls_context(ca, app_files.cert, app_files.key)
        return {
            "app": login(s.database.app_user, old_app, s.database.name),
            "superuser": login(s.database.superuser, old_super, "postgres"),
            "api": https_status(api, new_client, old_api),
            "api new": https_status(api, new_client, sim_api_password(sim)),
            "etcd old CA": https_status(etcd, tls_context(ca, old_cert, old_key)),
            "etcd new": https_status(etcd, new_client),
        }

    seen = sim.call(APP_HOST, old_credentials)
    assert "password authentication failed" in seen["app"], seen
    assert "password authentication failed" in seen["superuser"], seen
    assert seen["api"] == 401 and seen["api new"] == 202, seen
    assert str(seen["etcd old CA"]).startswith("refused") and seen["etcd new"] == 200, seen


def _db_hosts(sim: SimCluster) -> list[str]:
    """The database hosts of the cluster file now (a test may have added one)."""
    return [h.name for h in sim.settings().etcd_hosts()]


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


def _timings(sim: SimCluster) -> tuple[int, int, int]:
    return sim.settings().patroni.timings()


def _wait_new_leader(sim: SimCluster, old: NodeSpec, seen_from: str, timeout: float) -> NodeSpec:
    def other() -> NodeSpec | None:
        new = leader(sim, seen_from)
        return new if new is not None and new.name != old.name else None

    return wait_for(other, timeout=timeout, what=f"a new master instead of {old.name}")


def _wait_rows_equal(sim: SimCluster, a: NodeSpec, b: NodeSpec, timeout: float = 60) -> None:
    last: list[object] = []

    def same() -> bool:
        pair = (ledger_digest(sim, a), ledger_digest(sim, b))
        last[:] = [pair]
        return pair[0] == pair[1]

    try:
        wait_for(same, timeout=timeout, what=f"{a.name} holding exactly {b.name}'s rows")
    except TimeoutExpired as exc:
        raise AssertionError(f"{exc}: {last}") from exc


def test_an_isolated_master_demotes_and_rejoins_with_the_new_masters_rows(
    sim: SimCluster,
) -> None:
    wait_healthy(sim)
    prepare_ledger(sim)
    old = leader(sim)
    assert old is not None
    ttl, loop_wait, retry = _timings(sim)
    with Workload(sim, local_writer=old) as load:
        wait_for(lambda: len(load.seen.local_acked) >= 20, timeout=30, what="direct commits")
        cut_at = time.monotonic()
        sim.net.isolate(_host_of(sim, old))
        try:
            demoted_at = wait_for(
                lambda: load.seen.stopped_writing(old.name, cut_at),
                timeout=3 * (retry + loop_wait) + 10,
                what=f"{old.name} refusing writes on its isolated host",
            )
            new = _wait_new_leader(sim, old, APP_HOST, timeout=3 * ttl)
            wait_for(lambda: load.seen.acks_after(demoted_at) >= 20, timeout=60, what="writes")
        finally:
            sim.net.heal(_host_of(sim, old))
        wait_healthy(sim)
        healed_at = time.monotonic()
        wait_for(lambda: load.seen.acks_after(healed_at) >= 10, timeout=30, what="writes")
    seen = load.seen
    downtime = seen.max_write_gap(cut_at, time.monotonic())
    # On its own host, the isolated master acknowledges nothing once cut off: a commit waits for
    # its synchronous standby, on the other side (50 ms: an acknowledgement already on its way).
    acked_after_cut = [t - cut_at for t in seen.local_acked if cut_at + 0.05 < t < demoted_at]
    print(
        f"\nisolated master: {len(acked_after_cut)} commits acknowledged on its own host after "
        f"the cut; read-only after {demoted_at - cut_at:.2f} s (Patroni's demotion; bound "
        f"retry_timeout + loop_wait = {retry + loop_wait} s); new master {new.name}; write "
        f"downtime through the application host {downtime:.2f} s"
    )
    assert acked_after_cut == [], acked_after_cut
    assert seen.stopped_writing(old.name, cut_at) == demoted_at  # and never wrote again
    assert lost_writes(sim, [wid for wid, _, _ in seen.acked]) == []
    first_new = seen.first(new.name, True, cut_at)
    assert first_new is not None
    assert not seen.writable_after(old.name, first_new), "two writable masters"
    assert seen.most_write_servers_up() <= 1
    assert leader(sim) == new
    _wait_rows_equal(sim, old, new)


def test_the_application_host_on_the_minority_side_commits_nothing_then_follows(
    sim: SimCluster,
) -> None:
    wait_healthy(sim)
    prepare_ledger(sim)
    old = leader(sim)
    assert old is not None
    minority = [_host_of(sim, old), APP_HOST]
    majority = [h for h in _db_hosts(sim) if h not in minority]
    pids = {h: sim.net.pids(h) for h in (APP_HOST,)}
    ttl, loop_wait, retry = _timings(sim)
    with Workload(sim) as load:
        cut_at = time.monotonic()
        pairs = [(a, b) for a in minority for b in majority]
        for a, b in pairs:
            sim.net.cut(a, b)
            sim.net.cut(b, a)
        try:
            demoted_at = wait_for(
                lambda: load.seen.stopped_writing(old.name, cut_at),
                timeout=3 * (retry + loop_wait) + 10,
                what=f"{old.name} refusing writes on the minority side",
            )
            new = _wait_new_leader(sim, old, majority[0], timeout=3 * ttl)
            time.sleep(2)
            committed_after_demotion = load.seen.acks_after(demoted_at)
        finally:
            for a, b in pairs:
                sim.net.uncut(a, b)
                sim.net.uncut(b, a)
        healed_at = time.monotonic()
        wait_for(lambda: load.seen.acks_after(healed_at) >= 20, timeout=60, what="writes")
    wait_healthy(sim)
    seen = load.seen
    again = min(at for _, _, at in seen.acked if at > healed_at) - healed_at
    print(
        f"\nminority side: old master refused writes after {demoted_at - cut_at:.2f} s; the "
        f"application host wrote again {again:.2f} s after healing"
    )
    assert committed_after_demotion == 0
    assert lost_writes(sim, [wid for wid, _, _ in seen.acked]) == []
    assert leader(sim) == new
    # No restart on the application host: the same processes route to the new master.
    assert set(pids[APP_HOST]) <= set(sim.net.pids(APP_HOST))
    assert seen.most_write_servers_up() <= 1


def test_etcd_without_quorum_keeps_the_master_writing_in_failsafe_mode(sim: SimCluster) -> None:
    wait_healthy(sim)
    prepare_ledger(sim)
    primary = leader(sim)
    assert primary is not None
    timeline = _timeline(sim)
    # Two of three members (with a fourth host, two of four): no quorum either way.
    frozen = [h for h in _db_hosts(sim) if h != _host_of(sim, primary)][:2]
    etcd_pids = [Supervisor(sim.layout(h)).program("etcd").pid for h in frozen]
    assert all(etcd_pids)
    ttl, _, _ = _timings(sim)
    with Workload(sim) as load:
        stop_at = time.monotonic()
        for pid in etcd_pids:
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(ttl + 5)  # past the leader key's expiry
            status = sim.cli_json(APP_HOST, "status", expect_rc=1)
            errors_during = len(load.seen.in_doubt)
            acks_during = load.seen.acks_after(stop_at)
        finally:
            for pid in etcd_pids:
                assert pid is not None
                os.kill(pid, signal.SIGCONT)
        wait_healthy(sim)
    master_line = next(s for s in status["services"] if s["name"] == primary.name)
    print(
        f"\netcd without quorum for {ttl + 5} s: {acks_during} writes acknowledged, "
        f"{errors_during} errors; status said: {master_line['detail']}"
    )
    assert "FAILSAFE ACTIVE" in master_line["detail"], master_line
    assert errors_during == 0 and acks_during > 100
    assert leader(sim) == primary and _timeline(sim) == timeline
    assert load.seen.most_write_servers_up() <= 1
    assert lost_writes(sim, [wid for wid, _, _ in load.seen.acked]) == []


def _timeline(sim: SimCluster) -> int | None:
    members = sim.call(APP_HOST, lambda: PatroniAPI(sim.settings()).members())
    timelines = {m.timeline for m in members if m.reachable}
    assert len(timelines) == 1, members
    return timelines.pop()


def test_a_lost_master_host_is_replaced_and_comes_back_as_a_replica(sim: SimCluster) -> None:
    wait_healthy(sim)
    prepare_ledger(sim)
    old = leader(sim)
    assert old is not None
    host = _host_of(sim, old)
    ttl, loop_wait, _ = _timings(sim)
    with Workload(sim) as load:
        lost_at = time.monotonic()
        assert sim.net.lose(host) == []
        new = _wait_new_leader(sim, old, APP_HOST, timeout=3 * (ttl + loop_wait) + 10)
        elected_at = time.monotonic()
        wait_for(lambda: load.seen.acks_after(elected_at) >= 20, timeout=60, what="writes")
        resumed = min(at for _, _, at in load.seen.acked if at > lost_at) - lost_at
        sim.net.heal(host)  # the machine is back (rebooted): its operator starts its part
        restarted = sim.cli(host, "start", "video", timeout=240)
        assert restarted.rc == 0, restarted
        wait_healthy(sim)
    seen = load.seen
    print(
        f"\nlost master host: writes resumed after {resumed:.2f} s through the write port "
        f"(bound ttl + loop_wait + checks = {ttl + loop_wait + 2} s)"
    )
    assert lost_writes(sim, [wid for wid, _, _ in seen.acked]) == []
    assert seen.most_write_servers_up() <= 1
    first_new = seen.first(new.name, True, lost_at)
    assert first_new is not None and not seen.writable_after(old.name, first_new)
    _wait_rows_equal(sim, old, new)


DRILL_FIELDS = {
    "fault", "runs", "write_downtime_s", "read_downtime_s", "heal_s", "acknowledged",
    "lost_acknowledged", "in_doubt", "read_only_writes", "failed_reads", "unprotected_s",
    "two_primaries", "healed",
}  # fmt: skip


# Slow (about 75 s for both): './scripts/platform.sh test --slow' runs them. Each fault is also in
# the default run: test_an_isolated_master_demotes_and_rejoins_with_the_new_masters_rows and
# test_a_lost_master_host_is_replaced_and_comes_back_as_a_replica.
@pytest.mark.slow
@pytest.mark.parametrize("fault", ["isolate-host", "lose-host"])
def test_failover_test_drills_the_masters_whole_host(sim: SimCluster, fault: str) -> None:
    wait_healthy(sim)
    old = leader(sim)
    report = sim.cli_json(APP_HOST, "failover-test", "--fault", fault, expect_rc=None)
    print(f"\nfailover-test --fault {fault}: {report}")
    assert set(report) == DRILL_FIELDS  # the same JSON as the single-host faults
    run = report["runs"][0]
    assert run["old_primary"] == (old.name if old else None) != run["new_primary"]
    assert report["healed"] and not report["two_primaries"], report
    assert report["lost_acknowledged"] == 0 and report["acknowledged"] > 0, report
    assert report["read_only_writes"] == 0, report


def test_a_host_fault_without_its_commands_is_refused_before_any_load(sim: SimCluster) -> None:
    result = sim.cli(
        APP_HOST, "--set", "drill.isolate_command=", "failover-test", "--fault", "isolate-host"
    )
    assert result.rc == 2, result
    assert "drill.isolate_command" in result.stderr and "cluster file" in result.stderr, result


def test_a_fourth_host_joins_as_a_streaming_replica_with_connections_kept(sim: SimCluster) -> None:
    """The cluster has four database hosts afterwards (the tests above work with either)."""
    wait_healthy(sim)
    s = sim.settings()
    sessions = sim.call(
        APP_HOST,
        lambda: [sim.connect(APP_HOST, p) for p in (s.haproxy.write_port, s.haproxy.read_port)],
    )
    before = [c.info.backend_pid for c in sessions]
    sim.net.add_host("db4")
    drill = drill_toml(sim.net, sim.cluster_file)
    sim.cluster_file.write_text(cluster_toml(sim.net, (*DB_HOSTS, "db4"), drill))
    # 1. the changed cluster file, applied on every running host with no restart
    applied = sim.run_all((*DB_HOSTS, APP_HOST), "start", "video")
    assert all(r.rc == 0 for r in applied.values()), applied
    assert "HAProxy reloaded" in applied[APP_HOST].stdout, applied[APP_HOST]
    # 2. registered with etcd as a learner, from any running host
    added = sim.cli_json(DB_HOSTS[0], "add-host", "db4")
    assert added["etcd_member"], added
    # 3. the new host starts its part: etcd joins and is promoted, PostgreSQL clones and streams
    sim.started.append("db4")
    joined = sim.cli("db4", "start", "video", timeout=300)
    assert joined.rc == 0, joined
    report = wait_healthy(sim)  # now with postgres-video-4 streaming and in the read port
    assert {m.name for m in report.members} >= {"postgres-video-4"}
    read_up = {x.server for x in report.servers if x.backend == READ_BACKEND and x.up}
    assert "postgres-video-4" in read_up
    after = sim.call(
        APP_HOST,
        lambda: [c.execute("SELECT pg_backend_pid()").fetchone() for c in sessions],
    )
    assert [row[0] if row else None for row in after] == before, "a connection was dropped"
    for conn in sessions:
        conn.close()
    status = sim.cli_json("db4", "status")
    assert status["healthy"], status
    assert sum(1 for x in status["services"] if x["name"] == "etcd" and x["healthy"]) == 4


def test_the_fourth_host_leaves_again(sim: SimCluster) -> None:
    """After the fourth host joined: stop it, remove it, re-apply the file without it."""
    if "db4" not in _db_hosts(sim):
        pytest.skip("needs the fourth host of the test before")
    wait_healthy(sim)
    refused = sim.cli(DB_HOSTS[0], "remove-host", "db4")
    assert refused.rc == 1 and "still runs postgres-video-4" in refused.stderr, refused
    assert sim.cli("db4", "stop", timeout=120).rc == 0
    removed = sim.cli_json(DB_HOSTS[0], "remove-host", "db4")
    assert removed["etcd_member_removed"], removed
    sim.cluster_file.write_text(
        cluster_toml(sim.net, DB_HOSTS, drill_toml(sim.net, sim.cluster_file))
    )
    sim.started.remove("db4")
    applied = sim.run_all((*DB_HOSTS, APP_HOST), "start", "video")
    assert all(r.rc == 0 for r in applied.values()), applied
    report = wait_healthy(sim)
    assert "postgres-video-4" not in {x.server for x in report.servers}
    status = sim.cli_json(APP_HOST, "status")
    assert status["healthy"], status
    assert sum(1 for x in status["services"] if x["name"] == "etcd") == 3


def test_videos_stored_across_hosts_stream_from_another_application_host(
    sim: SimCluster, tmp_path: Path
) -> None:
    """The cluster file turns to SeaweedFS (a master and a volume server on each database host,
    a filer and gateway on each application host) and a second application host joins: a video
    uploaded through one streams byte for byte from the other, and is on two hosts."""
    wait_healthy(sim)
    sim.net.add_host(APP2)
    storage = '[storage]\nbackend = "seaweedfs"\n'
    drill = drill_toml(sim.net, sim.cluster_file)
    sim.cluster_file.write_text(
        cluster_toml(sim.net, tuple(_db_hosts(sim)), drill + storage, app_hosts=(APP_HOST, APP2))
    )
    applied = sim.run_all((*_db_hosts(sim), APP_HOST), "start", "video")
    assert all(r.rc == 0 for r in applied.values()), applied
    assert "started seaweedfs-master" in applied[DB_HOSTS[0]].stdout, applied[DB_HOSTS[0]]
    sim.started.append(APP2)
    assert "restarting upload, metadata, streaming" in applied[APP_HOST].stderr  # a new store
    joined = sim.cli(APP2, "start", "video", timeout=300)
    assert joined.rc == 0, joined

    video = make_video(tmp_path / "across.mp4")
    data = video.read_bytes()
    port = sim.settings(APP_HOST).apps.web_port

    def upload() -> dict[str, Any]:
        with video.open("rb") as f:
            made = httpx.post(
                f"http://{sim.net.hosts[APP_HOST].address}:{port}/api/videos",
                files={"file": (video.name, f, "video/mp4")},
                data={"title": "across hosts"},
                timeout=60,
            )
        assert made.status_code == 201, made.text
        return dict(made.json())

    created = sim.call(APP_HOST, upload)

    def stream() -> bytes:
        url = f"http://{sim.net.hosts[APP2].address}:{port}{created['stream_url']}"
        got = httpx.get(url, timeout=60)
        assert got.status_code == 200, got.text
        return got.content

    assert sim.call(APP2, stream) == data

    def volumes_with_files() -> dict[int, set[str]]:
        where: dict[int, set[str]] = {}
        volume_port = sim.settings(APP_HOST).storage.volume_ports[0]
        for host in _db_hosts(sim):
            url = f"http://{sim.net.hosts[host].address}:{volume_port}/status"
            for volume in httpx.get(url, timeout=10).json().get("Volumes") or []:
                if volume.get("FileCount", 0) > 0:
                    where.setdefault(int(volume["Id"]), set()).add(host)
        return where

    placed = sim.call(APP2, volumes_with_files)
    assert placed and all(len(hosts) == 2 for hosts in placed.values()), placed
    status = sim.cli_json(APP2, "status")
    storage_servers = [x for x in status["services"] if x["role"] == "storage"]
    assert {x["name"] for x in storage_servers} >= {
        "seaweedfs-master",
        "seaweedfs-volume-1",
        "seaweedfs-filer",
        "seaweedfs-s3",
    }
    assert all(x["healthy"] for x in storage_servers), storage_servers
    assert status["healthy"], status


def test_monitoring_across_hosts_scrapes_every_host_and_alerts_name_the_node(
    sim: SimCluster,
) -> None:
    """Monitoring turned on in the cluster file and applied to the running hosts: each
    application host's Prometheus scrapes every host's exporters and Patronis, and a replica
    stopped on a database host fires an alert naming that node, seen from either application
    host."""
    wait_healthy(sim)
    db_hosts = tuple(_db_hosts(sim))
    storage = '[storage]\nbackend = "seaweedfs"\n'
    drill = drill_toml(sim.net, sim.cluster_file)
    monitoring = "enabled = true\nscrape_interval_s = 2\nalert_for_s = 2"
    sim.cluster_file.write_text(
        cluster_toml(
            sim.net, db_hosts, drill + storage, app_hosts=(APP_HOST, APP2), monitoring=monitoring
        )
    )
    applied = sim.run_all((*db_hosts, APP_HOST, APP2), "start", "video")
    assert all(r.rc == 0 for r in applied.values()), applied
    assert "started prometheus" in applied[APP_HOST].stdout, applied[APP_HOST]
    assert "started node-exporter" in applied[db_hosts[0]].stdout, applied[db_hosts[0]]
    settings = sim.settings(APP_HOST)
    port = settings.monitoring.prometheus_port

    def targets() -> list[dict[str, Any]] | None:
        url = f"http://{sim.net.hosts[APP_HOST].address}:{port}/api/v1/targets"
        found = httpx.get(url, timeout=10).json()["data"]["activeTargets"]
        return found if found and all(t["health"] == "up" for t in found) else None

    up = sim.call(APP_HOST, lambda: wait_for(targets, timeout=90, what="every target up"))
    by_job: dict[str, set[str]] = {}
    for t in up:
        by_job.setdefault(t["labels"]["job"], set()).add(t["labels"]["host"])
    assert by_job["node"] == {*db_hosts, APP_HOST, APP2}, by_job
    assert by_job["postgres"] == set(db_hosts) and by_job["patroni"] == set(db_hosts), by_job
    assert by_job["etcd"] == set(db_hosts) and by_job["prometheus"] == {APP_HOST, APP2}, by_job

    replica = next(m for m in sim.cli_json(APP_HOST, "list") if m["role"] != "leader")
    where = next(n.host for n in settings.nodes if n.name == replica["name"])
    assert where is not None
    Supervisor(sim.layout(where)).stop_program(replica["name"])
    try:
        for host in (APP_HOST, APP2):

            def fires(host: str = host) -> list[dict[str, Any]] | None:
                found = sim.cli_json(host, "alerts")
                hits = [
                    a
                    for a in found
                    if a["name"] == "ReplicaNotStreaming"
                    and a["state"] == "firing"
                    and a["labels"]["node"] == replica["name"]
                ]
                return hits or None

            hit = wait_for(fires, timeout=90, what=f"the alert seen from {host}", interval=1.0)
            assert hit[0]["labels"]["host"] == where, hit
    finally:
        Supervisor(sim.layout(where)).start_program(replica["name"])
    wait_healthy(sim)
