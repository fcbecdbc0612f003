"""A platform across simulated hosts: 3 database/etcd hosts and 1 application host.

Every host is started the way an operator would on a real machine, with its own state directory
and one command (`platform.sh --cluster FILE --host NAME start video`), all four at once, inside
its own network namespace. Stopped by `stop` on each host, then every process left in the
namespaces is killed by pid and the namespaces are deleted.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psycopg

from tests.integration.harness import CLI, CliResult, operator_env
from tests.integration.simhosts import SimNetwork
from videodb.cluster.haproxy_stats import fetch_server_status
from videodb.cluster.health import HealthReport, check_health
from videodb.cluster.patroni_api import PatroniAPI
from videodb.cluster.render import READ_BACKEND, WRITE_BACKEND
from videodb.config import NodeSpec, Settings, load_settings
from videodb.errors import NotRunningError, TimeoutExpired
from videodb.layout import StateLayout
from videodb.sandbox import make_workdir
from videodb.secrets import bundle_path, with_bundle_password
from videodb.waiting import wait_for

T = TypeVar("T")
DB_HOSTS = ("db1", "db2", "db3")
APP_HOST = "app1"


def drill_toml(net: SimNetwork, cluster_file: Path) -> str:
    """How failover-test cuts off, kills and brings back a simulated host."""
    port = f"ip -n {net.switch} link set p-{{host}}"
    netns = f"vdb{net.tag}-{{host}}"
    start = (
        f"ip netns exec {netns} {CLI} --cluster {cluster_file} --host {{host}} "
        f"--state-dir {cluster_file.parent}/{{host}} start video"
    )
    return "\n".join(
        [
            "[drill]",
            f'isolate_command = "{port} down"',
            f'heal_command = "{port} up"',
            f'lose_command = "{port} down && ip netns pids {netns} | xargs -r kill -9"',
            f'restore_command = "{port} up && {start}"',
            "",
        ]
    )


def cluster_toml(
    net: SimNetwork,
    db_hosts: tuple[str, ...],
    extra: str = "",
    app_hosts: tuple[str, ...] = (APP_HOST,),
    monitoring: str = "enabled = false",
) -> str:
    """`monitoring`: the [monitoring] table's lines (off unless a test turns it on)."""
    lines = [
        "[monitoring]",
        monitoring,
        "[patroni]",
        'replication = "sync"',
        "[postgresql.parameters]",
        'shared_buffers = "64MB"',
        "",
    ]
    for name in (*db_hosts, *app_hosts):
        host = net.hosts[name]
        is_db = name in db_hosts
        lines += [
            "[[hosts]]",
            f'name = "{name}"',
            f'address = "{host.address}"',
            f"etcd = {'true' if is_db else 'false'}",
            f"haproxy = {'false' if is_db else 'true'}",
            f"apps = {'false' if is_db else 'true'}",
            "",
        ]
    for i, name in enumerate(db_hosts, start=1):
        lines += [
            "[[nodes]]",
            f'name = "postgres-video-{i}"',
            f'host = "{name}"',
            "port = 5433",
            "api_port = 8008",
            "",
        ]
    return "\n".join(lines) + extra


@dataclass
class SimCluster:
    net: SimNetwork
    workdir: Path
    cluster_file: Path
    started: list[str] = field(default_factory=list)  # hosts to stop at the end

    def state_dir(self, host: str) -> Path:
        return self.workdir / host

    def settings(self, host: str = APP_HOST) -> Settings:
        sets = [
            f"host={host}",
            f"secrets_bundle={bundle_path(self.cluster_file)}",
            f"state_dir={self.state_dir(host)}",  # its certificates, for TLS to the others
        ]
        loaded = load_settings(self.cluster_file, env={}, assignments=sets, require_file=True)
        return with_bundle_password(loaded).settings

    def layout(self, host: str) -> StateLayout:
        return StateLayout(self.state_dir(host))

    def argv(self, host: str, *args: str) -> list[str]:
        base = [CLI, "--cluster", str(self.cluster_file), "--host", host]
        return self.net.argv(host, [*base, "--state-dir", str(self.state_dir(host)), *args])

    def cli(self, host: str, *args: str, timeout: float = 120) -> CliResult:
        proc = subprocess.run(
            self.argv(host, *args),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=operator_env(),
            check=False,
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    def cli_json(self, host: str, *args: str, expect_rc: int | None = 0) -> Any:
        result = self.cli(host, *args, "--json")
        assert expect_rc is None or result.rc == expect_rc, result
        assert result.stdout.strip(), f"no JSON on stdout: {result}"
        return json.loads(result.stdout)

    def start_all(
        self, hosts: tuple[str, ...], timeout: float = 300, stagger_s: float = 0.0
    ) -> dict[str, CliResult]:
        """`start video` on every host, as operators on four machines would: at once, or one
        after the other `stagger_s` apart (in the order given)."""
        self.started += [h for h in hosts if h not in self.started]
        return self.run_all(hosts, "start", "video", timeout=timeout, stagger_s=stagger_s)

    def run_all(
        self, hosts: tuple[str, ...], *args: str, timeout: float = 300, stagger_s: float = 0.0
    ) -> dict[str, CliResult]:
        """One command on several hosts at once (or `stagger_s` apart)."""
        procs = {}
        for i, h in enumerate(hosts):
            if i and stagger_s:
                time.sleep(stagger_s)
            procs[h] = subprocess.Popen(
                self.argv(h, *args),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=operator_env(),
            )
        results = {}
        deadline = time.monotonic() + timeout
        for host, proc in procs.items():
            try:
                out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            results[host] = CliResult(proc.returncode, out, err)
        return results

    def call(self, host: str, fn: Callable[[], T], timeout: float = 120) -> T:
        return self.net.call(host, fn, timeout)

    def connect(self, host: str, port: int, target: str | None = None) -> psycopg.Connection[Any]:
        """An application connection from `host` to `target`'s address (default: its own).

        Call it inside `net.inside(host)` (or `call`): the socket belongs to that network.
        """
        s = self.settings(host)
        address = s.host_spec(target).address if target else s.address
        db = s.database
        return psycopg.connect(
            host=address,
            port=port,
            user=db.app_user,
            password=db.app_password.get_secret_value(),
            dbname=db.name,
            connect_timeout=2,
            autocommit=True,
        )


@contextmanager
def sim_cluster_lifecycle(
    failed: Callable[[], bool] = lambda: False, db_hosts: tuple[str, ...] = DB_HOSTS
) -> Iterator[SimCluster]:
    """Build the hosts, start them, yield; stop and remove everything (the state directories are
    kept when `failed()` says a test failed, or with VIDEODB_TEST_KEEP=1)."""
    workdir = make_workdir("videodb-mh-")
    net = SimNetwork()
    sim = SimCluster(net, workdir, workdir / "cluster.toml")
    try:
        for name in (*db_hosts, APP_HOST):
            net.add_host(name)
        cluster_file = sim.cluster_file
        cluster_file.write_text(cluster_toml(net, db_hosts, drill_toml(net, cluster_file)))
        init = subprocess.run(
            [CLI, "cluster", "init", str(cluster_file)],
            capture_output=True,
            text=True,
            env=operator_env(),
            timeout=60,
            check=False,
        )
        assert init.returncode == 0, init
        # Order must not matter: the application host first (no etcd of its own), then the
        # database hosts one by one; each waits, saying for what, until it has what it needs.
        results = sim.start_all((APP_HOST, *db_hosts), stagger_s=2.0)
        for host, result in results.items():
            assert result.rc == 0, f"start on {host} failed: {result}"
        for host in (APP_HOST, db_hosts[0]):
            assert "waiting for etcd to have a quorum (2 of 3 members" in results[host].stderr
        yield sim
    finally:
        problems = []
        stops = {}
        for host in sim.started:  # every host at once, as their operators would
            argv = [CLI, "--cluster", str(workdir / "cluster.toml"), "--host", host]
            argv += ["--state-dir", str(workdir / host), "stop"]
            stops[host] = subprocess.Popen(
                net.argv(host, argv),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=operator_env(),
            )
        for host, proc in stops.items():
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                problems.append(f"stop on {host} timed out")
        problems += net.close()
        keep = os.environ.get("VIDEODB_TEST_KEEP") == "1"  # to read the hosts' logs afterwards
        if not failed() and not problems and not keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"\nsimulated hosts' state kept for inspection: {workdir}")
        assert not problems, problems


LEDGER = "mh_ledger"


@dataclass
class Observations:
    """What clients and probes saw while a fault ran (times are time.monotonic())."""

    acked: list[tuple[str, int, float]] = field(default_factory=list)  # (id, seq, ack time)
    in_doubt: list[tuple[str, float]] = field(default_factory=list)
    reads: list[tuple[float, int]] = field(default_factory=list)  # (read start, max seq seen)
    # (node, time, accepts writes); None: its PostgreSQL did not answer (stopped, restarting)
    writable: list[tuple[str, float, bool | None]] = field(default_factory=list)
    write_up: list[tuple[float, tuple[str, ...]]] = field(default_factory=list)  # app HAProxy
    # writes committed directly on one node from its own host (Workload's `local_writer`)
    local_acked: list[float] = field(default_factory=list)
    read_up: list[tuple[float, tuple[str, ...]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def acks_after(self, t: float) -> int:
        with self.lock:
            return sum(1 for _, _, at in self.acked if at > t)

    def max_write_gap(self, start: float, end: float) -> float:
        with self.lock:
            points = sorted(at for _, _, at in self.acked if start <= at <= end)
        edges = [start, *points, end]
        return max(b - a for a, b in itertools.pairwise(edges))

    def first(self, node: str, writable: bool, after: float) -> float | None:
        with self.lock:
            times = [t for n, t, rw in self.writable if n == node and rw is writable and t > after]
        return min(times) if times else None

    def writable_after(self, node: str, t: float) -> bool:
        return self.first(node, True, t) is not None

    def stopped_writing(self, node: str, after: float) -> float | None:
        """When `node` stopped accepting writes for good after `after`: its first sample that is
        not writable (read-only, or not answering) with no writable sample later."""
        with self.lock:
            samples = sorted((t, rw) for n, t, rw in self.writable if n == node and t > after)
        last_rw = max((t for t, rw in samples if rw is True), default=after)
        later = [t for t, rw in samples if t > last_rw and rw is not True]
        return min(later) if later else None

    def most_write_servers_up(self) -> int:
        with self.lock:
            return max((len(up) for _, up in self.write_up), default=0)

    def stalest_read_s(self) -> float:
        """The oldest data any read through the read port returned: for each read, how long
        before it started the first acknowledged write it did not see was acknowledged."""
        with self.lock:
            acked = sorted((at, seq) for _, seq, at in self.acked)
            reads = list(self.reads)
        worst = 0.0
        for started, seen in reads:
            missing = [at for at, seq in acked if seq > seen and at < started]
            if missing:
                worst = max(worst, started - min(missing))
        return worst


class Workload:
    """A ledger writer (write port) and a reader (read port) on the application host, a probe
    on every database host asking its own PostgreSQL directly whether it accepts writes, and a
    sampler of the application host's HAProxy: all every 50-200 ms until `stop`."""

    def __init__(self, sim: SimCluster, local_writer: NodeSpec | None = None) -> None:
        """`local_writer`: also commit directly on that node, from inside its own host (what a
        client on the master's side of a partition would get acknowledged)."""
        self.sim = sim
        self.local_writer = local_writer
        self.seen = Observations()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> Workload:
        s = self.sim.settings(APP_HOST)
        self._spawn(APP_HOST, self._writer, s.haproxy.write_port)
        self._spawn(APP_HOST, self._reader, s.haproxy.read_port)
        self._spawn(APP_HOST, self._sampler)
        for node in s.nodes:
            assert node.host is not None
            self._spawn(node.host, self._prober, node.name, node.port)
        if self.local_writer is not None:
            assert self.local_writer.host is not None
            self._spawn(self.local_writer.host, self._direct_writer, self.local_writer.port)
        wait_for(lambda: len(self.seen.acked) >= 20, timeout=60, what="the writer's first commits")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)

    def _spawn(self, host: str, target: Callable[..., None], *args: Any) -> None:
        def run() -> None:
            with self.sim.net.inside(host):
                target(*args)

        thread = threading.Thread(target=run, daemon=True, name=f"{target.__name__}@{host}")
        thread.start()
        self._threads.append(thread)

    def _connect(self, host: str, port: int) -> psycopg.Connection[Any]:
        s = self.sim.settings(APP_HOST)
        return psycopg.connect(
            host=host,
            port=port,
            user=s.database.app_user,
            password=s.database.app_password.get_secret_value(),
            dbname=s.database.name,
            connect_timeout=1,
            autocommit=True,
            application_name="videodb-mh-test",
        )

    def _writer(self, port: int) -> None:
        address = self.sim.settings(APP_HOST).address
        conn: psycopg.Connection[Any] | None = None
        while not self._stop.is_set():
            try:
                conn = conn or self._connect(address, port)
            except psycopg.Error:
                self._stop.wait(0.05)
                continue
            wid = str(uuid.uuid4())
            try:
                row = conn.execute(
                    f"INSERT INTO {LEDGER} (id) VALUES (%s) RETURNING seq", (wid,)
                ).fetchone()
            except psycopg.Error:
                with self.seen.lock:
                    self.seen.in_doubt.append((wid, time.monotonic()))
                conn.close()
                conn = None
                continue
            assert row is not None
            with self.seen.lock:
                self.seen.acked.append((wid, int(row[0]), time.monotonic()))
            self._stop.wait(0.01)
        if conn is not None:
            conn.close()

    def _direct_writer(self, port: int) -> None:
        conn: psycopg.Connection[Any] | None = None
        while not self._stop.is_set():
            try:
                conn = conn or self._connect("127.0.0.1", port)
                conn.execute(f"INSERT INTO {LEDGER} (id) VALUES (%s)", (str(uuid.uuid4()),))
            except psycopg.Error:
                if conn is not None:
                    conn.close()
                conn = None
                self._stop.wait(0.05)
                continue
            with self.seen.lock:
                self.seen.local_acked.append(time.monotonic())
            self._stop.wait(0.01)
        if conn is not None:
            conn.close()

    def _reader(self, port: int) -> None:
        address = self.sim.settings(APP_HOST).address
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                with self._connect(address, port) as conn:
                    row = conn.execute(f"SELECT coalesce(max(seq), 0) FROM {LEDGER}").fetchone()
                assert row is not None
                with self.seen.lock:
                    self.seen.reads.append((started, int(row[0])))
            except psycopg.Error:
                pass
            self._stop.wait(0.05)

    def _prober(self, node: str, port: int) -> None:
        """Inside the node's own host: does its PostgreSQL accept writes right now?"""
        conn: psycopg.Connection[Any] | None = None
        while not self._stop.is_set():
            try:
                conn = conn or self._connect("127.0.0.1", port)
                row = conn.execute(
                    "SELECT NOT pg_is_in_recovery() AND "
                    "current_setting('default_transaction_read_only') = 'off'"
                ).fetchone()
                assert row is not None
                with self.seen.lock:
                    self.seen.writable.append((node, time.monotonic(), bool(row[0])))
            except psycopg.Error:
                with self.seen.lock:
                    self.seen.writable.append((node, time.monotonic(), None))
                if conn is not None:
                    conn.close()
                conn = None
            self._stop.wait(0.2)
        if conn is not None:
            conn.close()

    def _sampler(self) -> None:
        settings = self.sim.settings(APP_HOST)
        while not self._stop.is_set():
            try:
                servers = fetch_server_status(settings, timeout=1.0)
            except NotRunningError:
                self._stop.wait(0.2)
                continue
            now = time.monotonic()
            write = tuple(s.server for s in servers if s.backend == WRITE_BACKEND and s.up)
            read = tuple(s.server for s in servers if s.backend == READ_BACKEND and s.up)
            with self.seen.lock:
                self.seen.write_up.append((now, write))
                self.seen.read_up.append((now, read))
            self._stop.wait(0.2)


def prepare_ledger(sim: SimCluster) -> None:
    def create() -> None:
        s = sim.settings(APP_HOST)
        with sim.connect(APP_HOST, s.haproxy.write_port) as conn:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {LEDGER} (seq bigserial PRIMARY KEY, "
                "id uuid UNIQUE NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())"
            )

    sim.call(APP_HOST, create)


def leader(sim: SimCluster, seen_from: str = APP_HOST) -> NodeSpec | None:
    return sim.call(seen_from, lambda: PatroniAPI(sim.settings(seen_from)).leader())


def wait_healthy(sim: SimCluster, timeout: float = 120) -> HealthReport:
    """Healthy as the application host sees it: one primary, every replica streaming, a
    synchronous standby, its HAProxy routing by the roles; and still so after two of
    Patroni's loops. One healthy sample is not enough: right after etcd comes back, the
    replicas' Patroni drops and re-sets primary_conninfo and the master clears /sync for a
    moment, and a master lost in that moment has no candidate allowed to replace it."""
    settings = sim.settings(APP_HOST)
    _, loop_wait, _ = settings.patroni.timings()
    settle = 2 * loop_wait + 1
    last: list[HealthReport] = []
    since: list[float] = []

    def healthy() -> bool:
        report = check_health(settings)
        last[:] = [report]
        if not report.healthy:
            since.clear()
            return False
        if not since:
            since.append(time.monotonic())
        return time.monotonic() - since[0] >= settle

    try:
        sim.call(
            APP_HOST,
            lambda: wait_for(healthy, timeout=timeout, what="a healthy cluster"),
            timeout=timeout + 30,
        )
    except TimeoutExpired as exc:
        raise AssertionError(f"{exc}: {last[0].problems if last else '?'}") from exc
    return last[0]


def lost_writes(sim: SimCluster, acked: list[str]) -> list[str]:
    """The acknowledged ids missing on the current primary (asked through the write port)."""

    def missing() -> list[str]:
        s = sim.settings(APP_HOST)
        with sim.connect(APP_HOST, s.haproxy.write_port) as conn:
            rows = conn.execute(
                f"SELECT id::text FROM {LEDGER} WHERE id = ANY(%s::uuid[])", (acked,)
            ).fetchall()
        found = {str(r[0]) for r in rows}
        return [wid for wid in acked if wid not in found]

    return sim.call(APP_HOST, missing)


def ledger_digest(sim: SimCluster, node: NodeSpec) -> tuple[int, str]:
    """(rows, md5 of every id in order) on one node, asked directly from the application host."""

    def digest() -> tuple[int, str]:
        s = sim.settings(APP_HOST)
        with sim.connect(APP_HOST, node.port, target=node.host) as conn:
            row = conn.execute(
                f"SELECT count(*), coalesce(md5(string_agg(id::text, ',' ORDER BY id)), '') "
                f"FROM {LEDGER}"
            ).fetchone()
        assert row is not None and s is not None
        return int(row[0]), str(row[1])

    return sim.call(APP_HOST, digest)
