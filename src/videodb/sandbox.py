"""A throwaway platform on free ports in a temporary directory (for tests and benchmarks)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from videodb.config import Settings, load_settings
from videodb.layout import StateLayout
from videodb.ports import free_ports

PORT_KEYS = (
    "nodes.0.port",
    "nodes.0.api_port",
    "nodes.1.port",
    "nodes.1.api_port",
    "etcd.client_port",
    "etcd.peer_port",
    "haproxy.write_port",
    "haproxy.read_port",
    "haproxy.stats_port",
    "apps.web_port",
    "apps.upload_port",
    "apps.metadata_port",
    "apps.streaming_port",
    "storage.master_port",
    "storage.master_grpc_port",
    "storage.volume_ports.0",
    "storage.volume_ports.1",
    "storage.volume_grpc_ports.0",
    "storage.volume_grpc_ports.1",
    "storage.filer_port",
    "storage.filer_grpc_port",
    "storage.s3_port",
    "storage.s3_grpc_port",
    "nodes.0.exporter_port",
    "nodes.1.exporter_port",
    "monitoring.prometheus_port",
    "monitoring.alertmanager_port",
    "monitoring.alertmanager_cluster_port",
    "monitoring.node_exporter_port",
    "monitoring.postgres_exporter_port",
    "monitoring.scheduler_port",
)

# A test's platform runs no monitoring unless it asks (`monitoring="enabled = true"`): five
# more processes scraping every second would slow every other test on two cores.
MONITORING_OFF = "enabled = false"


def make_workdir(prefix: str) -> Path:
    """A temporary directory PostgreSQL's OS user can reach (mkdtemp makes 0700 ones)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


def write_sandbox_config(
    workdir: Path,
    extra: str = "",
    apps: str = "",
    storage: str = "",
    monitoring: str = MONITORING_OFF,
) -> Path:
    """A config file with every port free and the state directory inside `workdir`.

    `extra` is appended (whole TOML tables); `apps`, `storage` and `monitoring` are more lines
    of the [apps], [storage] and [monitoring] tables (e.g. 'backend = "seaweedfs"').
    """
    v = dict(zip(PORT_KEYS, free_ports(len(PORT_KEYS)), strict=True))
    text = f"""state_dir = "{workdir / "state"}"
[[nodes]]
name = "postgres-video-master"
port = {v["nodes.0.port"]}
api_port = {v["nodes.0.api_port"]}
exporter_port = {v["nodes.0.exporter_port"]}
[[nodes]]
name = "postgres-video-slave"
port = {v["nodes.1.port"]}
api_port = {v["nodes.1.api_port"]}
exporter_port = {v["nodes.1.exporter_port"]}
[etcd]
client_port = {v["etcd.client_port"]}
peer_port = {v["etcd.peer_port"]}
[haproxy]
write_port = {v["haproxy.write_port"]}
read_port = {v["haproxy.read_port"]}
stats_port = {v["haproxy.stats_port"]}
[apps]
web_port = {v["apps.web_port"]}
upload_port = {v["apps.upload_port"]}
metadata_port = {v["apps.metadata_port"]}
streaming_port = {v["apps.streaming_port"]}
{apps}
[storage]
master_port = {v["storage.master_port"]}
master_grpc_port = {v["storage.master_grpc_port"]}
volume_ports = [{v["storage.volume_ports.0"]}, {v["storage.volume_ports.1"]}]
volume_grpc_ports = [{v["storage.volume_grpc_ports.0"]}, {v["storage.volume_grpc_ports.1"]}]
filer_port = {v["storage.filer_port"]}
filer_grpc_port = {v["storage.filer_grpc_port"]}
s3_port = {v["storage.s3_port"]}
s3_grpc_port = {v["storage.s3_grpc_port"]}
{storage}
[monitoring]
prometheus_port = {v["monitoring.prometheus_port"]}
alertmanager_port = {v["monitoring.alertmanager_port"]}
alertmanager_cluster_port = {v["monitoring.alertmanager_cluster_port"]}
node_exporter_port = {v["monitoring.node_exporter_port"]}
postgres_exporter_port = {v["monitoring.postgres_exporter_port"]}
scheduler_port = {v["monitoring.scheduler_port"]}
{monitoring}
{extra}"""
    path = workdir / "platform.toml"
    path.write_text(text)
    return path


@dataclass(frozen=True)
class Sandbox:
    workdir: Path
    config_file: Path
    settings: Settings
    layout: StateLayout


@contextmanager
def sandbox(
    prefix: str = "videodb-",
    extra: str = "",
    keep: bool = False,
    apps: str = "",
    storage: str = "",
    monitoring: str = MONITORING_OFF,
) -> Iterator[Sandbox]:
    """Config and directories for a platform of its own; removed afterwards unless `keep`.

    Starting and stopping it is the caller's business (the state directory must be stopped
    before it is removed).
    """
    workdir = make_workdir(prefix)
    config_file = write_sandbox_config(workdir, extra, apps, storage, monitoring)
    settings = load_settings(config_file, env={}, require_file=True).settings
    try:
        yield Sandbox(workdir, config_file, settings, StateLayout(workdir / "state"))
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
