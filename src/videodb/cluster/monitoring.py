"""Prometheus, Alertmanager and the exporters, run by the host's supervisord (`[monitoring]`).

Every host: a node exporter (the filesystems holding the platform's data, WAL and backups, and a
textfile saying what each one holds) and a postgres_exporter beside each of its PostgreSQL nodes
(the platform's own queries: replay lag in seconds, WAL archiving, connections, commits).
The monitoring hosts (those running the applications): Prometheus, scraping every target of
every host, with the alert rules of cluster/alert_rules.py, and Alertmanager delivering to
`monitoring.webhook_url`. The first monitoring host also runs the backup scheduler.

Debian's packages: prometheus, prometheus-alertmanager, prometheus-node-exporter and
prometheus-postgres-exporter (platform.sh installs them).
"""

from __future__ import annotations

import ipaddress
import json
import os
import pwd
import shutil
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from videodb.backup_repo import repo_for
from videodb.cluster.alert_rules import alert_rules
from videodb.cluster.supervisor import Supervisor
from videodb.config import HostSpec, NodeSpec, Settings
from videodb.layout import ServiceUser, StateLayout, tls_files
from videodb.services.ops import OpsSettings
from videodb.waiting import wait_for

PROMETHEUS = "prometheus"
ALERTMANAGER = "alertmanager"
NODE_EXPORTER = "node-exporter"
SCHEDULER = "backup-scheduler"

BINARIES = {
    PROMETHEUS: "prometheus",
    ALERTMANAGER: "prometheus-alertmanager",
    NODE_EXPORTER: "prometheus-node-exporter",
    "postgres-exporter": "prometheus-postgres-exporter",
}

# What postgres_exporter asks each node (its built-in queries are off: several fail on a
# replica, and these are what the alerts and the operations page read).
EXPORTER_QUERIES: dict[str, Any] = {
    "videodb_replication": {
        "query": (
            "SELECT CASE WHEN NOT pg_is_in_recovery() THEN 0"
            " WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0"
            " ELSE GREATEST(0, EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()))"
            " END AS lag_seconds,"
            " CASE WHEN pg_is_in_recovery() THEN 1 ELSE 0 END AS in_recovery,"
            " CASE WHEN pg_is_in_recovery() AND pg_is_wal_replay_paused() THEN 1 ELSE 0 END"
            " AS replay_paused"
        ),
        "metrics": [
            {"lag_seconds": {"usage": "GAUGE", "description": "Seconds the replay is behind"}},
            {"in_recovery": {"usage": "GAUGE", "description": "1 on a replica"}},
            {"replay_paused": {"usage": "GAUGE", "description": "1 while replay is paused"}},
        ],
    },
    "videodb_archiver": {
        "query": (
            "SELECT archived_count, failed_count,"
            " COALESCE(EXTRACT(EPOCH FROM last_archived_time), 0) AS last_archived_time,"
            " COALESCE(EXTRACT(EPOCH FROM last_failed_time), 0) AS last_failed_time,"
            " CASE WHEN last_failed_time IS NOT NULL AND (last_archived_time IS NULL"
            " OR last_failed_time > last_archived_time) THEN 1 ELSE 0 END AS failing,"
            " (SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready')"
            " AS ready_segments"
            " FROM pg_stat_archiver"
        ),
        "metrics": [
            {"archived_count": {"usage": "COUNTER", "description": "WAL files archived"}},
            {"failed_count": {"usage": "COUNTER", "description": "Failed archive attempts"}},
            {"last_archived_time": {"usage": "GAUGE", "description": "Last success (epoch)"}},
            {"last_failed_time": {"usage": "GAUGE", "description": "Last failure (epoch)"}},
            {"failing": {"usage": "GAUGE", "description": "1 when the last attempt failed"}},
            {"ready_segments": {"usage": "GAUGE", "description": "WAL files not archived yet"}},
        ],
    },
    "videodb_connections": {
        "query": (
            "SELECT count(*) AS used, current_setting('max_connections')::int AS max"
            " FROM pg_stat_activity WHERE backend_type = 'client backend'"
        ),
        "metrics": [
            {"used": {"usage": "GAUGE", "description": "Client connections"}},
            {"max": {"usage": "GAUGE", "description": "max_connections"}},
        ],
    },
    "videodb_transactions": {
        "query": (
            "SELECT COALESCE(sum(xact_commit), 0) AS commits,"
            " COALESCE(sum(xact_rollback), 0) AS rollbacks FROM pg_stat_database"
        ),
        "metrics": [
            {"commits": {"usage": "COUNTER", "description": "Committed transactions"}},
            {"rollbacks": {"usage": "COUNTER", "description": "Rolled back transactions"}},
        ],
    },
}

# Filesystems node_exporter leaves out; tmpfs and overlay stay in (a state directory on /tmp,
# a container's root).
FS_TYPES_EXCLUDE = (
    "^(autofs|binfmt_misc|bpf|cgroup2?|configfs|debugfs|devpts|devtmpfs|fusectl|hugetlbfs|"
    "iso9660|mqueue|nsfs|proc|procfs|pstore|rpc_pipefs|securityfs|selinuxfs|squashfs|sysfs|"
    "tracefs)$"
)


RESEND_DELAY_S = 10


def exporter_program(node: NodeSpec) -> str:
    return f"{node.name}-exporter"


@dataclass(frozen=True)
class MonitorProgram:
    name: str
    argv: list[str]
    port: int  # where it answers (HTTP)
    env: dict[str, str] = field(default_factory=dict)
    service_user: bool = True  # False: the invoking user (the scheduler reads the secrets)


def conf_dir(layout: StateLayout) -> Path:
    return layout.conf / "monitoring"


def textfile_dir(layout: StateLayout) -> Path:
    return conf_dir(layout) / "textfile"


def settings_file(layout: StateLayout) -> Path:
    """The settings the backup scheduler runs with (secrets included: 0600, invoking user)."""
    return layout.conf / "settings.json"


def binary(name: str) -> str | None:
    return shutil.which(BINARIES[name])


def missing_binaries(settings: Settings) -> list[str]:
    """Debian packages a host lacks for its part of the monitoring."""
    if not settings.monitoring.enabled:
        return []
    return [b for b in BINARIES.values() if shutil.which(b) is None]


def _url_host(address: str) -> str:
    return f"[{address}]" if ipaddress.ip_address(address).version == 6 else address


def programs(settings: Settings, layout: StateLayout, host: HostSpec) -> list[MonitorProgram]:
    """What `host` runs of the monitoring (nothing when monitoring.enabled is false)."""
    m = settings.monitoring
    if not m.enabled:
        return []
    addr = _url_host(host.address)
    conf = conf_dir(layout)
    data = layout.data
    found = [
        MonitorProgram(
            NODE_EXPORTER,
            [
                binary(NODE_EXPORTER) or BINARIES[NODE_EXPORTER],
                f"--web.listen-address={addr}:{m.node_exporter_port}",
                "--collector.disable-defaults",
                "--collector.filesystem",
                "--collector.textfile",
                "--collector.meminfo",
                "--collector.loadavg",
                "--collector.cpu",
                f"--collector.textfile.directory={textfile_dir(layout)}",
                f"--collector.filesystem.fs-types-exclude={FS_TYPES_EXCLUDE}",
            ],
            m.node_exporter_port,
        )
    ]
    tls = tls_files(layout)
    for node in settings.nodes_on(host):
        # The monitoring role (pg_monitor), logged in by its client certificate; the server's
        # certificate checked against the cluster CA.
        where = f"{_url_host(host.address)}:{node.port}"
        uri = (
            f"{where}/postgres?sslmode=verify-ca&sslrootcert={tls.ca}"
            f"&sslcert={tls.monitor_cert}&sslkey={tls.monitor_key}"
        )
        found.append(
            MonitorProgram(
                exporter_program(node),
                [
                    binary("postgres-exporter") or BINARIES["postgres-exporter"],
                    f"--web.listen-address={addr}:{settings.exporter_port(node)}",
                    "--disable-default-metrics",
                    "--disable-settings-metrics",
                    "--no-collector.database",
                    "--no-collector.bgwriter",
                    f"--extend.query-path={conf / 'postgres-exporter.yml'}",
                ],
                settings.exporter_port(node),
                env={
                    "DATA_SOURCE_URI": uri,
                    "DATA_SOURCE_USER": settings.database.monitor_user,
                    "PGAPPNAME": "videodb-exporter",
                },
            )
        )
    if host in settings.monitoring_hosts():
        found.append(
            MonitorProgram(
                PROMETHEUS,
                [
                    binary(PROMETHEUS) or BINARIES[PROMETHEUS],
                    f"--config.file={conf / 'prometheus.yml'}",
                    f"--storage.tsdb.path={data / 'prometheus'}",
                    f"--storage.tsdb.retention.time={m.retention}",
                    f"--web.listen-address={addr}:{m.prometheus_port}",
                    # Alerts go to Alertmanager again every 10 s (not 1 min): a reload leaves
                    # the notifier without Alertmanagers for a moment, and what it sends then
                    # is lost until the next resend (measured: 60 s late after every reload).
                    f"--rules.alert.resend-delay={RESEND_DELAY_S}s",
                    "--web.console.templates=/nonexistent",
                    "--web.console.libraries=/nonexistent",
                ],
                m.prometheus_port,
            )
        )
        others = [h for h in settings.monitoring_hosts() if h.name != host.name]
        cluster = (
            [f"--cluster.listen-address={addr}:{m.alertmanager_cluster_port}"]
            + [f"--cluster.peer={target(h.address, m.alertmanager_cluster_port)}" for h in others]
            if others
            else ["--cluster.listen-address="]  # one Alertmanager: no gossip
        )
        found.append(
            MonitorProgram(
                ALERTMANAGER,
                [
                    binary(ALERTMANAGER) or BINARIES[ALERTMANAGER],
                    f"--config.file={conf / 'alertmanager.yml'}",
                    f"--storage.path={data / 'alertmanager'}",
                    f"--web.listen-address={addr}:{m.alertmanager_port}",
                    *cluster,
                ],
                m.alertmanager_port,
            )
        )
    if host == settings.scheduler_host():
        found.append(
            MonitorProgram(
                SCHEDULER,
                [
                    sys.executable,
                    "-m",
                    "videodb.backups.scheduler",
                    "--settings",
                    str(settings_file(layout)),
                    "--state",
                    str(layout.root),
                ],
                m.scheduler_port,
                service_user=False,
            )
        )
    return found


def target(address: str, port: int) -> str:
    return f"{_url_host(address)}:{port}"


def prometheus_config(settings: Settings, layout: StateLayout) -> dict[str, Any]:
    """Every target of every host, each labelled with its host (and node, service)."""
    m = settings.monitoring
    tls = tls_files(layout)
    interval = f"{m.scrape_interval_s}s"
    jobs: dict[str, list[dict[str, Any]]] = {}

    def add(job: str, address: str, port: int, **labels: str) -> None:
        jobs.setdefault(job, []).append({"targets": [target(address, port)], "labels": labels})

    for host in settings.topology_hosts():
        add("node", host.address, m.node_exporter_port, host=host.name)
        for node in settings.nodes_on(host):
            add("patroni", host.address, node.api_port, host=host.name, node=node.name)
            exporter = settings.exporter_port(node)
            add("postgres", host.address, exporter, host=host.name, node=node.name)
        if host.etcd:
            add("etcd", host.address, settings.etcd.client_port, host=host.name)
        if host.haproxy:
            add("haproxy", host.address, settings.haproxy.stats_port, host=host.name)
        if host.apps:
            for service, port in settings.apps.service_ports().items():
                add("apps", host.address, port, host=host.name, service=service)
        if host in settings.monitoring_hosts():
            add("prometheus", host.address, m.prometheus_port, host=host.name)
            add("alertmanager", host.address, m.alertmanager_port, host=host.name)
        if host == settings.scheduler_host():
            add("backup-scheduler", host.address, m.scheduler_port, host=host.name)
    ca_only = {"ca_file": str(tls.ca)}
    with_cert = {**ca_only, "cert_file": str(tls.cert), "key_file": str(tls.key)}
    scrape = []
    for job, targets in jobs.items():
        entry: dict[str, Any] = {"job_name": job, "static_configs": targets}
        if job == "patroni":
            entry |= {"scheme": "https", "tls_config": ca_only}
        if job == "etcd":
            entry |= {"scheme": "https", "tls_config": with_cert}
        scrape.append(entry)
    managers = [target(h.address, m.alertmanager_port) for h in settings.monitoring_hosts()]
    return {
        "global": {
            "scrape_interval": interval,
            "evaluation_interval": interval,
            "scrape_timeout": f"{max(1, min(m.scrape_interval_s, 10))}s",
            "external_labels": {"cluster": settings.patroni.scope},
        },
        "rule_files": [str(conf_dir(layout) / "rules.yml")],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": managers}]}]},
        "scrape_configs": scrape,
    }


def alertmanager_config(settings: Settings) -> dict[str, Any]:
    m = settings.monitoring
    receivers: list[dict[str, Any]] = [{"name": "silent"}]
    receiver = "silent"
    if m.webhook_url:
        receiver = "webhook"
        receivers.append(
            {"name": "webhook", "webhook_configs": [{"url": m.webhook_url, "send_resolved": True}]}
        )
    return {
        "route": {
            "receiver": receiver,
            "group_by": ["alertname", "host", "node", "kind", "mountpoint", "service"],
            "group_wait": f"{m.group_wait_s}s",
            "group_interval": f"{max(1, m.group_wait_s)}s",
            "repeat_interval": m.repeat_interval,
        },
        "receivers": receivers,
    }


def _mountpoint(path: Path) -> Path:
    current = path.resolve()
    while not current.exists():
        current = current.parent
    while not os.path.ismount(current):
        current = current.parent
    return current


def volumes(settings: Settings, layout: StateLayout) -> dict[Path, list[str]]:
    """The filesystems of this host that hold a node's data and WAL or the backups, and what
    each one holds."""
    holds: dict[Path, list[str]] = {}
    for node in settings.local_nodes():
        holds.setdefault(_mountpoint(layout.node_data(node.name)), []).append(
            f"{node.name} data and WAL"
        )
    holds.setdefault(_mountpoint(repo_for(settings, layout).root), []).append("backups")
    return holds


def volumes_textfile(settings: Settings, layout: StateLayout) -> str:
    lines = [
        "# HELP videodb_volume_info A filesystem holding the platform's data, WAL or backups.",
        "# TYPE videodb_volume_info gauge",
    ]
    for mount, what in sorted(volumes(settings, layout).items()):
        holds = ", ".join(what).replace('"', "'")
        lines.append(f'videodb_volume_info{{mountpoint="{mount}",holds="{holds}"}} 1')
    return "\n".join(lines) + "\n"


def settings_json(settings: Settings) -> str:
    """The settings, secrets included (for the scheduler, which cannot read the config file's
    flags and environment)."""

    def plain(value: Any) -> Any:
        if hasattr(value, "get_secret_value"):
            return value.get_secret_value()
        if isinstance(value, Path):
            return str(value)
        raise TypeError(f"cannot write {type(value).__name__} as JSON")

    return json.dumps(settings.model_dump(mode="python"), default=plain, indent=2) + "\n"


def _write(path: Path, text: str, user: ServiceUser, mode: int = 0o644) -> bool:
    """Write `text` if it differs; owned by `user`. True when it changed."""
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except OSError:
        pass
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, mode)
    if not user.is_current:
        os.chown(tmp, user.uid, user.gid)
    os.replace(tmp, path)
    return True


def _dump(data: Any) -> str:
    return "# Generated by videodb; edits here are overwritten.\n" + yaml.safe_dump(
        data, sort_keys=False, default_flow_style=False, width=120
    )


def prepare(settings: Settings, layout: StateLayout, user: ServiceUser) -> list[str]:
    """Write this host's monitoring files; returns the programs whose files changed (to be
    reloaded or restarted on a running host)."""
    mine = programs(settings, layout, settings.this_host())
    if not mine:
        return []
    conf = conf_dir(layout)
    for folder in (conf, textfile_dir(layout)):
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o755)
        if not user.is_current:
            os.chown(folder, user.uid, user.gid)
    changed: list[str] = []
    names = {p.name for p in mine}
    _write(textfile_dir(layout) / "volumes.prom", volumes_textfile(settings, layout), user)
    exporters = [p.name for p in mine if p.name.endswith("-exporter") and p.name != NODE_EXPORTER]
    if exporters and _write(conf / "postgres-exporter.yml", _dump(EXPORTER_QUERIES), user):
        changed += exporters
    if PROMETHEUS in names:
        for folder in (layout.data / "prometheus", layout.data / "alertmanager"):
            folder.mkdir(parents=True, exist_ok=True)
            os.chmod(folder, 0o700)
            if not user.is_current:
                os.chown(folder, user.uid, user.gid)
        config = _write(conf / "prometheus.yml", _dump(prometheus_config(settings, layout)), user)
        rules = _write(conf / "rules.yml", _dump(alert_rules(settings)), user)
        if config or rules:
            changed.append(PROMETHEUS)
        if _write(conf / "alertmanager.yml", _dump(alertmanager_config(settings)), user):
            changed.append(ALERTMANAGER)
    if SCHEDULER in names:
        current = _write(settings_file(layout), settings_json(settings), _invoking(), 0o600)
        if current:
            changed.append(SCHEDULER)
    return changed


def _invoking() -> ServiceUser:
    entry = pwd.getpwuid(os.geteuid())
    return ServiceUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


def ops_settings(settings: Settings, layout: StateLayout) -> OpsSettings:
    """Where this host's operations page reads from: its own Prometheus (or the first
    monitoring host's) and every node's Patroni REST API."""
    hosts = settings.monitoring_hosts()
    this = settings.this_host()
    prometheus = None
    if hosts:
        host = this if this in hosts else hosts[0]
        prometheus = f"http://{target(host.address, settings.monitoring.prometheus_port)}"
    return OpsSettings(
        prometheus_url=prometheus,
        patroni_urls=[
            f"https://{target(settings.node_address(n), n.api_port)}" for n in settings.nodes
        ],
        ca_file=str(tls_files(layout).ca),
        step_s=max(settings.monitoring.scrape_interval_s, 5),
    )


def wait_ready(settings: Settings, layout: StateLayout, timeout: float) -> None:
    """Until this host's monitoring programs answer (Prometheus and Alertmanager: ready)."""
    host = settings.this_host()
    for program in programs(settings, layout, host):
        url = f"http://{target(host.address, program.port)}"
        url += "/-/ready" if program.name in (PROMETHEUS, ALERTMANAGER) else "/metrics"

        def answers(url: str = url) -> bool:
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    return bool(response.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        wait_for(
            answers,
            timeout=timeout,
            what=f"{program.name} answering on {url}",
            interval=0.1,
            hint=f"see 'platform.sh logs {program.name}'",
        )


def watched_files(settings: Settings, layout: StateLayout) -> dict[str, list[Path]]:
    """The generated files each of this host's monitoring programs reads at start."""
    conf = conf_dir(layout)
    found: dict[str, list[Path]] = {}
    for program in programs(settings, layout, settings.this_host()):
        if program.name == PROMETHEUS:
            found[program.name] = [conf / "prometheus.yml", conf / "rules.yml"]
        elif program.name == ALERTMANAGER:
            found[program.name] = [conf / "alertmanager.yml"]
        elif program.name == SCHEDULER:
            found[program.name] = [settings_file(layout)]
        elif program.name != NODE_EXPORTER:
            found[program.name] = [conf / "postgres-exporter.yml"]
    return found


def apply_changes(layout: StateLayout, changed: list[str], supervisor: Supervisor) -> list[str]:
    """On a running host: Prometheus and Alertmanager re-read their files (SIGHUP); an
    exporter or the scheduler whose files changed restarts."""
    running = {p.name for p in supervisor.programs() if p.running}
    done = []
    for name in changed:
        if name not in running:
            continue
        if name in (PROMETHEUS, ALERTMANAGER):
            supervisor.signal_program(name, "HUP")
            done.append(f"{name} reloaded its configuration")
        else:
            supervisor.stop_program(name)
            supervisor.start_program(name)
            done.append(f"{name} restarted with its new configuration")
    return done
