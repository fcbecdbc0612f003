"""`failover-test`: inject a fault on the master under load and measure what clients saw.

A writer commits rows with client-generated ids through the write port and remembers every
acknowledged one (an error is "in doubt", never "lost": a COMMIT can succeed and still fail to
answer). A reader opens a connection through the read port for every read. A probe on each node,
direct, tries a small write every 50 ms: two nodes accepting writes at once is a split brain. After
the fault the drill waits for the cluster to heal by itself, then looks every acknowledged id up on
the new master.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from videodb.cluster import ha
from videodb.cluster.health import check_health
from videodb.cluster.patroni_api import PatroniAPI
from videodb.cluster.pg import connect_superuser
from videodb.cluster.postmaster import postmaster_pid
from videodb.cluster.supervisor import Supervisor, supervisord_pid
from videodb.config import NodeSpec, Settings
from videodb.errors import ClusterError, ConfigError, TimeoutExpired
from videodb.layout import StateLayout
from videodb.runner import run_tool
from videodb.secrets import ClusterSecrets
from videodb.waiting import wait_for

FAULTS = ("kill-postgres", "kill-node", "freeze", "switchover", "isolate-host", "lose-host")
# The faults that act on the master's whole host, through the drill.* commands of a cluster file.
HOST_FAULTS = {
    "isolate-host": ("isolate_command", "heal_command"),
    "lose-host": ("lose_command", "restore_command"),
}
WRITE_TABLE = "videodb_drill"
PROBE_TABLE = "videodb_drill_probe"
READ_ONLY_SQLSTATE = "25006"
Progress = Callable[[str], None]


@dataclass
class DrillRun:
    fault: str
    replication: str
    old_primary: str
    new_primary: str
    write_downtime_s: float
    read_downtime_s: float
    acknowledged: int
    lost_acknowledged: int
    in_doubt: int
    read_only_writes: int
    failed_reads: int
    unprotected_s: float | None  # sync modes: commits acknowledged with no synchronous standby
    two_primaries: bool
    healed: bool
    heal_s: float
    lost_ids: list[str] = field(default_factory=list)


@dataclass
class DrillReport:
    fault: str
    runs: list[DrillRun]

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"fault": self.fault, "runs": [asdict(r) for r in self.runs]}
        for key in ("write_downtime_s", "read_downtime_s", "heal_s"):
            values = [getattr(r, key) for r in self.runs]
            data[key] = {"median": round(statistics.median(values), 3), "worst": max(values)}
        for key in (
            "acknowledged",
            "lost_acknowledged",
            "in_doubt",
            "read_only_writes",
            "failed_reads",
        ):
            data[key] = sum(getattr(r, key) for r in self.runs)
        unprotected = [r.unprotected_s for r in self.runs if r.unprotected_s is not None]
        data["unprotected_s"] = (
            {"median": round(statistics.median(unprotected), 3), "worst": max(unprotected)}
            if unprotected
            else None
        )
        data["two_primaries"] = any(r.two_primaries for r in self.runs)
        data["healed"] = all(r.healed for r in self.runs)
        return data

    @property
    def passed(self) -> bool:
        return all(r.healed and not r.two_primaries and r.lost_acknowledged == 0 for r in self.runs)


@dataclass
class _Recorder:
    acked: list[tuple[str, float]] = field(default_factory=list)  # (id, ack time)
    in_doubt: list[str] = field(default_factory=list)
    read_only_writes: int = 0
    reads_ok: list[float] = field(default_factory=list)
    failed_reads: int = 0
    probes: list[tuple[str, float]] = field(default_factory=list)  # (node, ack time)
    sync_samples: list[tuple[float, bool]] = field(default_factory=list)  # (ack time, unprotected)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _app_params(settings: Settings, port: int, host: str | None = None) -> dict[str, Any]:
    db = settings.database
    return {
        "host": host or settings.address,
        "port": port,
        "user": db.app_user,
        "password": db.app_password.get_secret_value(),
        "dbname": db.name,
        "connect_timeout": 1,
        "autocommit": True,
        "application_name": "videodb-drill",
    }


def _writer(settings: Settings, stop: threading.Event, rec: _Recorder) -> None:
    conn: psycopg.Connection[tuple[Any, ...]] | None = None
    while not stop.is_set():
        if conn is None:
            try:
                conn = psycopg.connect(**_app_params(settings, settings.haproxy.write_port))
            except psycopg.Error:
                stop.wait(0.02)
                continue
        wid = str(uuid.uuid4())
        try:
            conn.execute(f"INSERT INTO {WRITE_TABLE} (id) VALUES (%s)", (wid,))
        except psycopg.Error as exc:
            with rec.lock:
                rec.in_doubt.append(wid)
                # The write port reached a server in recovery (SQLSTATE 25006): it must route
                # only to a writable primary.
                rec.read_only_writes += exc.sqlstate == READ_ONLY_SQLSTATE
            conn.close()
            conn = None
            continue
        with rec.lock:
            rec.acked.append((wid, time.monotonic()))
        stop.wait(0.005)
    if conn is not None:
        conn.close()


def _reader(settings: Settings, stop: threading.Event, rec: _Recorder) -> None:
    while not stop.is_set():
        try:
            with psycopg.connect(**_app_params(settings, settings.haproxy.read_port)) as conn:
                conn.execute("SELECT 1").fetchone()
            with rec.lock:
                rec.reads_ok.append(time.monotonic())
        except psycopg.Error:
            with rec.lock:
                rec.failed_reads += 1
        stop.wait(0.01)


def _prober(settings: Settings, node: NodeSpec, stop: threading.Event, rec: _Recorder) -> None:
    """Direct, small writes on one node: which nodes accept writes, and when."""
    while not stop.is_set():
        try:
            params = _app_params(settings, node.port, settings.node_address(node))
            with psycopg.connect(**params) as conn:
                row = conn.execute(
                    f"INSERT INTO {PROBE_TABLE} (node) VALUES (%s) "
                    "RETURNING current_setting('synchronous_standby_names')",
                    (node.name,),
                ).fetchone()
            acked = time.monotonic()
            with rec.lock:
                rec.probes.append((node.name, acked))
                # Acknowledged with no synchronous standby named: a commit no replica holds.
                rec.sync_samples.append((acked, not (row and row[0])))
        except psycopg.Error:
            pass
        stop.wait(0.05)


def _max_gap(times: list[float], start: float, end: float) -> float:
    points = sorted(t for t in times if start <= t <= end)
    edges = [start, *points, end]
    return max(b - a for a, b in itertools.pairwise(edges))


def _unprotected_s(samples: list[tuple[float, bool]]) -> float:
    """How long commits were acknowledged with `synchronous_standby_names` empty: each probe
    commit acknowledged so counts until the next probe commit (probes run every 50 ms)."""
    points = sorted(samples)
    return sum(b - a for (a, empty), (b, _) in itertools.pairwise(points) if empty)


def _two_primaries(probes: list[tuple[str, float]], old: str) -> bool:
    """True when the old master acknowledged a write after another node had acknowledged one."""
    others = [t for node, t in probes if node != old]
    if not others:
        return False
    first_other = min(others)
    return any(node == old and t > first_other for node, t in probes)


def child_pids(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _postgres_pids(layout: StateLayout, node: str) -> list[int]:
    pm = postmaster_pid(layout.node_data(node))
    if pm is None:
        raise ClusterError(f"no running postmaster for {node}")
    return [pm, *child_pids(pm)]


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            continue


def _prepare_tables(settings: Settings, secrets: ClusterSecrets) -> None:
    with psycopg.connect(**_app_params(settings, settings.haproxy.write_port)) as conn:
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {WRITE_TABLE} "
            "(id uuid PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {PROBE_TABLE} "
            "(node text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
    wait = ha.wait_sync(settings, secrets, timeout=30)
    if not wait.synced:
        raise ClusterError(f"replicas did not catch up before the drill: {wait.lag_bytes}")


def _inject(
    fault: str,
    settings: Settings,
    layout: StateLayout,
    secrets: ClusterSecrets,
    old: NodeSpec,
    freeze_seconds: float,
    timeout: float,
    progress: Progress,
) -> None:
    api = PatroniAPI(settings)
    if fault == "switchover":
        ha.switchover(settings, secrets, None, timeout=timeout)
        return
    if fault == "kill-postgres":
        # The whole instance at once, as the OOM killer would: a postmaster killed alone leaves
        # its idle backends behind, and their shared memory blocks a restart until they exit.
        _signal(_postgres_pids(layout, old.name), signal.SIGKILL)
        return
    if fault == "freeze":
        patroni_pid = Supervisor(layout).program(old.name).pid
        if patroni_pid is None:
            raise ClusterError(f"Patroni of {old.name} is not running")
        pids = [patroni_pid, *_postgres_pids(layout, old.name)]
        _signal(pids, signal.SIGSTOP)
        try:
            deadline = time.monotonic() + freeze_seconds
            while time.monotonic() < deadline:
                time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        finally:
            _signal(pids, signal.SIGCONT)
        return
    if fault == "kill-node":
        with node_down(layout, old.name):
            progress(f"{old.name} killed (Patroni and postgres); waiting for a new leader")

            def new_leader() -> bool:
                leader = api.leader()
                return leader is not None and leader.name != old.name

            wait_for(new_leader, timeout=timeout, what="another node taking over", interval=0.05)
        return
    if fault in HOST_FAULTS:
        _host_fault(fault, settings, old, timeout, progress)
        return
    raise ConfigError(f"unknown fault {fault!r}; choose one of {', '.join(FAULTS)}")


def check_host_fault_config(settings: Settings, fault: str) -> list[str]:
    """The fault's (fault, repair) command templates, or a ConfigError naming what is missing.
    Asked before the drill waits for anything, so a bad configuration is refused at once."""
    if not settings.multi_host:
        raise ConfigError(
            f"--fault {fault} acts on a whole host: run it against a cluster file "
            "(--cluster FILE) whose hosts are separate machines"
        )
    keys = HOST_FAULTS[fault]
    values = [getattr(settings.drill, key) for key in keys]
    if not all(values):
        missing = ", ".join(f"drill.{k}" for k, v in zip(keys, values, strict=True) if not v)
        raise ConfigError(
            f"--fault {fault} needs {missing} in the cluster file: the shell commands that do it "
            "on these machines, with {host} and {address} (see docs/operator-guide.md, 'Drills "
            "across hosts')"
        )
    return [str(v) for v in values]


def host_fault_commands(settings: Settings, fault: str, host: str) -> tuple[str, str]:
    """The (fault, repair) shell commands for `host`, or a ConfigError naming the keys to set."""
    values = check_host_fault_config(settings, fault)
    if host == settings.this_host().name:
        raise ConfigError(
            f"--fault {fault} would cut off the host the drill runs on ({host}); run "
            "failover-test on an application host that does not run the master"
        )
    spec = settings.host_spec(host)
    fault_cmd, repair_cmd = (str(v).format(host=spec.name, address=spec.address) for v in values)
    return fault_cmd, repair_cmd


def _host_fault(
    fault: str, settings: Settings, old: NodeSpec, timeout: float, progress: Progress
) -> None:
    host = settings.node_host(old).name
    fault_cmd, repair_cmd = host_fault_commands(settings, fault, host)
    api = PatroniAPI(settings)
    limit = settings.drill.command_timeout_s
    progress(f"{fault} {host} (the master's host): {fault_cmd}")
    run_tool(["sh", "-c", fault_cmd], what=f"drill.{HOST_FAULTS[fault][0]}", timeout=limit)
    try:

        def new_leader() -> bool:
            leader = api.leader()
            return leader is not None and leader.name != old.name

        wait_for(new_leader, timeout=timeout, what="another node taking over", interval=0.1)
    finally:
        progress(f"bringing {host} back: {repair_cmd}")
        run_tool(["sh", "-c", repair_cmd], what=f"drill.{HOST_FAULTS[fault][1]}", timeout=limit)


@contextmanager
def node_down(layout: StateLayout, node: str) -> Iterator[None]:
    """kill -9 a node's Patroni and postgres; it stays down until the block ends.

    supervisord is paused meanwhile (nothing restarts the node), then resumed: it restarts the
    node's Patroni as a machine would after a reboot.
    """
    sup = supervisord_pid(layout)
    if sup is None:
        raise ClusterError("supervisord is not running")
    patroni_pid = Supervisor(layout).program(node).pid
    if patroni_pid is None:
        raise ClusterError(f"Patroni of {node} is not running")
    pids = [patroni_pid, *_postgres_pids(layout, node)]
    os.kill(sup, signal.SIGSTOP)
    try:
        _signal(pids, signal.SIGKILL)
        yield
    finally:
        os.kill(sup, signal.SIGCONT)


def run_drill(
    settings: Settings,
    layout: StateLayout,
    secrets: ClusterSecrets,
    fault: str,
    *,
    freeze_seconds: float | None = None,
    heal_timeout: float = 180.0,
    progress: Progress = lambda _: None,
) -> DrillRun:
    if fault not in FAULTS:
        raise ConfigError(f"unknown fault {fault!r}; choose one of {', '.join(FAULTS)}")
    ttl = settings.patroni.timings()[0]
    freeze_for = freeze_seconds if freeze_seconds is not None else ttl + 5.0
    if fault in HOST_FAULTS:
        check_host_fault_config(settings, fault)
    progress("waiting for a healthy cluster")
    wait_for(
        lambda: check_health(settings).healthy,
        timeout=heal_timeout,
        what="a healthy cluster before the drill",
        hint="see 'platform.sh status'",
    )
    old = PatroniAPI(settings).require_leader("to drill on")
    if fault in HOST_FAULTS:  # refuse before any load when the commands are missing
        host_fault_commands(settings, fault, settings.node_host(old).name)
    _prepare_tables(settings, secrets)
    rec = _Recorder()
    stop = threading.Event()
    threads = [
        threading.Thread(target=_writer, args=(settings, stop, rec), daemon=True),
        threading.Thread(target=_reader, args=(settings, stop, rec), daemon=True),
        *(
            threading.Thread(target=_prober, args=(settings, n, stop, rec), daemon=True)
            for n in settings.nodes
        ),
    ]
    for thread in threads:
        thread.start()
    began = time.monotonic()
    wait_for(lambda: len(rec.acked) >= 20, timeout=30, what="the writer's first commits")
    progress(f"injecting {fault} on {old.name}")
    fault_at = time.monotonic()
    healed = True
    try:
        _inject(fault, settings, layout, secrets, old, freeze_for, heal_timeout, progress)
        progress("waiting for the cluster to heal by itself")
        wait_for(
            lambda: _healed(settings),
            timeout=heal_timeout,
            what="one master plus streaming replicas after the fault",
            interval=0.1,
        )
    except TimeoutExpired:
        healed = False
    heal_s = time.monotonic() - fault_at
    # Keep the load on a little longer, so a late outage shows in the gaps.
    count = len(rec.acked)
    with contextlib.suppress(TimeoutExpired):
        wait_for(lambda: len(rec.acked) >= count + 50, timeout=15, what="writes after healing")
    stop.set()
    for thread in threads:
        thread.join(timeout=10)
    end = time.monotonic()
    new = PatroniAPI(settings).leader()
    if new is None:
        raise ClusterError(
            f"no master {heal_s:.0f} s after {fault}: the acknowledged writes cannot be checked; "
            "see 'platform.sh status' and the nodes' logs"
        )
    lost = _lost(settings, secrets, new, [wid for wid, _ in rec.acked])
    return DrillRun(
        fault=fault,
        replication=settings.patroni.replication,
        old_primary=old.name,
        new_primary=new.name,
        write_downtime_s=round(_max_gap([t for _, t in rec.acked], began, end), 3),
        read_downtime_s=round(_max_gap(rec.reads_ok, began, end), 3),
        acknowledged=len(rec.acked),
        lost_acknowledged=len(lost),
        in_doubt=len(rec.in_doubt),
        read_only_writes=rec.read_only_writes,
        failed_reads=rec.failed_reads,
        unprotected_s=(
            None
            if settings.patroni.replication == "async"
            else round(_unprotected_s(rec.sync_samples), 3)
        ),
        two_primaries=_two_primaries(rec.probes, old.name),
        healed=healed,
        heal_s=round(heal_s, 3),
        lost_ids=lost[:20],
    )


def _healed(settings: Settings) -> bool:
    report = check_health(settings)
    return report.healthy


def _lost(
    settings: Settings, secrets: ClusterSecrets, primary: NodeSpec, acked: list[str]
) -> list[str]:
    with connect_superuser(settings, secrets, primary, dbname=settings.database.name) as conn:
        rows = conn.execute(
            f"SELECT id::text FROM {WRITE_TABLE} WHERE id = ANY(%s::uuid[])", (acked,)
        ).fetchall()
    found = {str(r[0]) for r in rows}
    return [wid for wid in acked if wid not in found]


def run_drills(
    settings: Settings,
    layout: StateLayout,
    secrets: ClusterSecrets,
    fault: str,
    repeat: int = 1,
    freeze_seconds: float | None = None,
    progress: Progress = lambda _: None,
) -> DrillReport:
    runs = []
    for i in range(repeat):
        progress(f"run {i + 1} of {repeat}")
        runs.append(
            run_drill(
                settings, layout, secrets, fault, freeze_seconds=freeze_seconds, progress=progress
            )
        )
    return DrillReport(fault, runs)
