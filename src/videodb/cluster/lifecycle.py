"""Start, stop, restart and destroy the platform under one state directory."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from videodb.cluster.apps import ensure_programs
from videodb.cluster.ha import apply_dynamic_config, is_paused, reconfigure
from videodb.cluster.health import (
    HealthReport,
    check_health,
    etcd_healthy,
    etcd_member_healthy,
    sync_standby_chosen,
)
from videodb.cluster.hosts import etcd_join, promote_when_in_sync, reapply
from videodb.cluster.monitoring import wait_ready
from videodb.cluster.patroni_api import PatroniAPI
from videodb.cluster.pg import ensure_application_database, ensure_monitor_role
from videodb.cluster.postmaster import pg_ctl_stop, postmaster_pid
from videodb.cluster.preflight import check_prerequisites, find_toolchain
from videodb.cluster.state import is_fresh, nodes_to_hold_back, prepare_state, validate_haproxy
from videodb.cluster.supervisor import (
    Supervisor,
    start_supervisord,
    stop_supervisord,
    supervisord_pid,
)
from videodb.cluster.tls import client_context, ensure_host_certs
from videodb.config import Settings
from videodb.errors import ClusterError, TimeoutExpired
from videodb.layout import StateLayout, service_user
from videodb.platform_lock import LOCK_NAME
from videodb.secrets import (
    ClusterSecrets,
    load_secrets,
)
from videodb.waiting import wait_for

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


@dataclass
class StartResult:
    already_running: bool
    state_dir: Path
    elapsed_s: float
    primary: str | None
    warnings: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)  # applied to a running cluster


@dataclass
class StopResult:
    was_running: bool
    stopped_pids: list[int] = field(default_factory=list)


def is_running(layout: StateLayout) -> bool:
    return supervisord_pid(layout) is not None


def start(
    settings: Settings,
    layout: StateLayout,
    *,
    timeout: float = 180.0,
    progress: Progress = _quiet,
    flags: frozenset[str] = frozenset(),
) -> StartResult:
    """Start the platform and wait until it is healthy.

    On a running platform nothing is restarted; the dynamic settings named in `flags`
    ('failover', 'replication', 'profile': those given on the command line) are applied.
    """
    began = time.monotonic()
    warnings = []
    if settings.uses_dev_password():
        warnings.append(
            f"the application role {settings.database.app_user} uses the development default "
            "password; run 'platform.sh rotate password app' (or set DB_PASSWORD) for anything but "
            "development"
        )
    if is_running(layout):
        changes = []
        secrets = load_secrets(layout)
        if flags:
            progress(f"already running: applying {', '.join(f'--{f}' for f in sorted(flags))}")
            changes = reconfigure(settings, secrets, set(flags))
        tools, _ = find_toolchain(settings)
        if tools is not None:
            changes += reapply(settings, layout, service_user(), tools, secrets.api_password)
        if settings.monitoring.enabled:
            # The exporters' role, on a platform started before it existed
            leader = PatroniAPI(settings).leader()
            if leader is not None:
                ensure_monitor_role(settings, secrets, leader)
        # Servers the configuration now lists (SeaweedFS's, after storage.backend changed)
        added = ensure_programs(settings, layout, Supervisor(layout))
        changes += [f"started {name} (newly configured)" for name in added]
        report = check_health(settings)
        return StartResult(
            True, layout.root, time.monotonic() - began, report.primary, warnings, changes
        )
    user = service_user()
    progress("checking ports and binaries")
    tools = check_prerequisites(settings, layout, user)
    fresh = is_fresh(settings, layout)
    held_back = nodes_to_hold_back(settings, layout)
    # This host's certificates first: asking the running etcd whether to join it needs them (a
    # new host that cannot verify the others would take itself for the first and bootstrap).
    ensure_host_certs(settings, layout, user, progress)
    join = etcd_join(settings, layout)
    if join is not None:
        progress(f"joining the running etcd cluster ({join.initial_cluster})")
    progress(f"writing configuration under {layout.root}")
    secrets = prepare_state(
        settings, layout, user, tools, held_back, join.initial_cluster if join else None, progress
    )
    validate_haproxy(tools, layout)
    progress(f"starting supervisord ({', '.join(_parts(settings))})")
    supervisor = start_supervisord(layout)
    deadline = began + timeout
    try:
        if join is not None:
            promote_when_in_sync(join, _remaining(deadline), progress)
        _wait_cluster(
            settings, layout, secrets, deadline, progress, supervisor, held_back, fresh=fresh
        )
    except TimeoutExpired as exc:
        raise TimeoutExpired(
            f"{exc}; the platform is left running for inspection: see 'platform.sh status' and "
            f"'platform.sh logs <service>', or 'platform.sh stop'"
        ) from exc
    if settings.monitoring.enabled:
        progress("waiting for the monitoring (Prometheus, Alertmanager, exporters)")
        wait_ready(settings, layout, _remaining(deadline))
    report = check_health(settings, check_haproxy=False)
    log.info("started %s: primary %s", layout.root, report.primary)
    return StartResult(False, layout.root, time.monotonic() - began, report.primary, warnings)


def _parts(settings: Settings) -> list[str]:
    """What this host runs, for the progress line."""
    this = settings.this_host()
    parts = ["etcd"] if this.etcd else []
    local = settings.local_nodes()
    if local:
        parts.append(f"Patroni x{len(local)}")
    parts += ["HAProxy"] if this.haproxy else []
    if settings.multi_host:
        parts.append(f"host {this.name} at {this.address}")
    return parts


def _every(seconds: float, say: Callable[[], None]) -> Callable[[float], None]:
    """An on_wait callback that says something every `seconds` of waiting."""
    next_at = [seconds]

    def on_wait(elapsed: float) -> None:
        if elapsed >= next_at[0]:
            next_at[0] += seconds
            say()

    return on_wait


def _remaining(deadline: float) -> float:
    return max(1.0, deadline - time.monotonic())


def _wait_cluster(
    settings: Settings,
    layout: StateLayout,
    secrets: ClusterSecrets,
    deadline: float,
    progress: Progress,
    supervisor: Supervisor,
    held_back: frozenset[str],
    *,
    fresh: bool,
) -> None:
    logs = layout.logs
    etcd_hosts = [h.name for h in settings.etcd_hosts()]
    if len(etcd_hosts) > 1:
        progress(
            f"waiting for etcd to have a quorum ({len(etcd_hosts) // 2 + 1} of {len(etcd_hosts)} "
            f"members: {', '.join(etcd_hosts)}); start the other hosts too"
        )
    else:
        progress("waiting for etcd")

    def etcd_waiting() -> None:
        context = client_context(settings)
        up = [u for u in settings.etcd_client_urls() if etcd_member_healthy(u, context, 0.5)]
        progress(f"still waiting for an etcd quorum: {len(up)} of {len(etcd_hosts)} answer")

    wait_for(
        lambda: etcd_healthy(settings),
        timeout=_remaining(deadline),
        what="etcd healthy (a quorum of its members)",
        hint=f"see {logs / 'etcd.log'}" if settings.this_host().etcd else "start the etcd hosts",
        on_wait=_every(10.0, etcd_waiting),
    )
    api = PatroniAPI(settings, secrets.api_password)
    if not fresh:
        # A cluster stopped in maintenance mode would not start its postgres: resume first;
        # the configured failover mode is applied again once the cluster is healthy.
        wait_for(
            lambda: any(m.reachable for m in api.members()),
            timeout=_remaining(deadline),
            what="a Patroni REST API answering",
            hint=f"see {logs}/<node>.log",
        )
        if is_paused(settings):
            progress("maintenance mode was on: resuming it so that the nodes start")
            api.patch_config({"pause": False})
    progress("waiting for Patroni to elect a primary")
    primary = wait_for(
        api.leader,
        timeout=_remaining(deadline),
        what="a running primary",
        hint=f"see {logs}/<node>.log ('platform.sh logs {settings.nodes[0].name}')",
    )
    progress(f"primary is {primary.name}; creating role {settings.database.app_user} and database")
    ensure_application_database(settings, secrets, primary)
    for name in sorted(held_back):
        progress(f"starting {name} (clones from {primary.name})")
        supervisor.start_program(name)
    progress("waiting for the replicas to stream and HAProxy to route")
    last: list[HealthReport] = []

    local = frozenset(n.name for n in settings.local_nodes())

    def healthy() -> bool:
        # As far as this host can tell: one primary, this host's nodes streaming (or leading),
        # and this host's HAProxy routing by the roles; other hosts may still be starting.
        report = check_health(
            settings,
            require_sync=False,
            only_nodes=local if settings.multi_host else None,
            check_haproxy=settings.this_host().haproxy,
        )
        last[:] = [report]
        return report.healthy

    try:
        wait_for(healthy, timeout=_remaining(deadline), what="a healthy cluster", interval=0.3)
    except TimeoutExpired as exc:
        problems = "; ".join(last[0].problems) if last else "unknown"
        raise TimeoutExpired(f"{exc} ({problems})") from exc
    p = settings.patroni
    progress(f"applying failover={p.failover}, replication={p.replication}, profile={p.profile}")
    apply_dynamic_config(settings, secrets)
    if p.replication != "async":
        wait_for(
            lambda: sync_standby_chosen(settings),
            timeout=_remaining(deadline),
            what="a synchronous standby",
            hint="see 'platform.sh replication-status'",
        )


def stop(settings: Settings, layout: StateLayout, timeout: float = 120.0) -> StopResult:
    """Stop every process this state directory started; the data stays."""
    result = StopResult(was_running=False)
    pid = stop_supervisord(layout, timeout=timeout)
    if pid is not None:
        result.was_running = True
        result.stopped_pids.append(pid)
    # Patroni stops PostgreSQL when it exits; a postmaster left behind (Patroni killed -9) is
    # found through its data directory and stopped the way PostgreSQL wants.
    for node in settings.local_nodes():
        data_dir = layout.node_data(node.name)
        pm_pid = postmaster_pid(data_dir)
        if pm_pid is None:
            continue
        result.was_running = True
        pg_ctl_stop(settings, data_dir)
        result.stopped_pids.append(pm_pid)
    return result


def destroy(settings: Settings, layout: StateLayout) -> StopResult:
    """Stop everything and remove the state directory (data, logs, secrets, backups)."""
    root = layout.root
    contents = [p for p in root.iterdir() if p.name != LOCK_NAME] if root.exists() else []
    if contents and not layout.supervisor_config().exists():
        raise ClusterError(
            f"{root} does not look like a videodb state directory (no conf/supervisord.conf); "
            "refusing to delete it"
        )
    result = stop(settings, layout)
    if root.exists():
        shutil.rmtree(root)
    return result
