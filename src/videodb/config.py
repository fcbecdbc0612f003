"""The settings model and its loader: defaults < TOML file < environment < flags.

Every value has the guide's default. A bad value is reported with the source it came from (file,
environment variable or flag), the dotted key, and the value seen.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from videodb.errors import ConfigError

Port = Annotated[int, Field(ge=1, le=65535)]
ParamValue = str | int | float | bool

ENV_PREFIX = "VIDEODB__"
DEV_APP_PASSWORD = "upload_pass"

# The guide's "Performance Tuning" values, plus what replication and pg_rewind need.
GUIDE_PARAMETERS: dict[str, ParamValue] = {
    "wal_buffers": "16MB",
    "checkpoint_completion_target": 0.9,
    "max_wal_size": "1GB",
    "shared_buffers": "256MB",
    "effective_cache_size": "1GB",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


NODE_NAME_PATTERN = r"[a-z][a-z0-9-]{0,62}"


class NodeSpec(_Strict):
    """One PostgreSQL node managed by Patroni, on one host of the topology."""

    name: Annotated[str, Field(pattern=f"^{NODE_NAME_PATTERN}$")]
    port: Port
    api_port: Port
    host: Annotated[str, Field(pattern=f"^{NODE_NAME_PATTERN}$")] | None = None  # None: the first
    # Its postgres_exporter (monitoring); unset: monitoring.postgres_exporter_port + its index
    exporter_port: Port | None = None


LOCAL_HOST = "local"  # the one host of the single-machine default


class HostSpec(_Strict):
    """One machine of the deployment: its address and what runs on it.

    The PostgreSQL nodes name their host (`nodes[].host`). Every service on a host listens on
    its address, and every address another host is given is this one (never loopback).
    """

    name: Annotated[str, Field(pattern=f"^{NODE_NAME_PATTERN}$")]
    address: str
    etcd: bool = True  # an etcd member
    haproxy: bool = True  # the write, read and stats ports (and the web port with apps)
    apps: bool = True  # the upload, metadata and streaming applications

    @model_validator(mode="after")
    def _address_is_ip(self) -> HostSpec:
        try:
            ipaddress.ip_address(self.address)
        except ValueError as exc:
            raise ValueError(
                f"host {self.name}: address {self.address!r} is not an IP address"
            ) from exc
        if self.apps and not self.haproxy:
            raise ValueError(
                f"host {self.name}: apps = true needs haproxy = true (the applications reach the "
                "database through their own host's write and read ports)"
            )
        return self


class TLSSpec(_Strict):
    """Certificates of the cluster CA (cluster/tls.py)."""

    # `status` warns when a certificate expires within this many days
    warn_days: Annotated[int, Field(ge=1, le=3650)] = 30
    host_cert_days: Annotated[int, Field(ge=1, le=3650)] = 825


class EtcdSpec(_Strict):
    client_port: Port = 2379
    peer_port: Port = 2380
    binary: str = "etcd"


class HAProxySpec(_Strict):
    write_port: Port = 5435
    read_port: Port = 5436
    stats_port: Port = 8404
    binary: str = "haproxy"
    maxconn: Annotated[int, Field(ge=10)] = 2000
    # A replica further behind its primary than this (WAL bytes) leaves the read port. Unset:
    # 16MB across hosts; no bound on one machine (as the guide's read port has it).
    read_max_lag: Annotated[str, Field(pattern=r"^\d+(B|kB|MB|GB)?$")] | None = None
    # True: a replica must also be streaming (one cut off from its primary leaves at once, but
    # while the master is lost every replica leaves too, until a new one leads). False: replicas
    # stay while within read_max_lag of the last position in etcd (reads go on during a failover;
    # a replica cut off from the primary and from etcd is never judged stale). Unset: True across
    # hosts (a network can cut a replica off), False on one machine (nothing can).
    read_requires_streaming: bool | None = None
    check_interval_ms: Annotated[int, Field(ge=100, le=60_000)] = 1000
    fast_interval_ms: Annotated[int, Field(ge=50, le=60_000)] = 250  # after a failed check
    # How often a DOWN server is checked: how soon the write port opens on a new primary (a
    # switchover's write pause: 1.70 s median at 250 ms, 1.61 s at 100; docs/benchmarks.md).
    down_interval_ms: Annotated[int, Field(ge=50, le=60_000)] = 100
    rise: Annotated[int, Field(ge=1, le=10)] = 1
    fall: Annotated[int, Field(ge=1, le=10)] = 2
    timeout_connect: Annotated[str, Field(pattern=r"^\d+(ms|s|m)$")] = "250ms"
    timeout_client: Annotated[str, Field(pattern=r"^\d+(ms|s|m|h)$")] = "30m"
    timeout_server: Annotated[str, Field(pattern=r"^\d+(ms|s|m|h)$")] = "30m"


class DatabaseSpec(_Strict):
    name: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]{0,62}$")] = "video_platform"
    app_user: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]{0,62}$")] = "upload_user"
    app_password: SecretStr = SecretStr(DEV_APP_PASSWORD)
    superuser: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]{0,62}$")] = "postgres"
    replication_user: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]{0,62}$")] = "replicator"
    # The exporters' role: pg_monitor only, logs in with a client certificate (no password)
    monitor_user: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]{0,62}$")] = "videodb_monitor"

    @model_validator(mode="after")
    def _distinct_roles(self) -> DatabaseSpec:
        names = [self.app_user, self.superuser, self.replication_user, self.monitor_user]
        if len(set(names)) != len(names):
            raise ValueError(
                f"app_user, superuser, replication_user and monitor_user must differ, got {names}; "
                "each role has its own privileges"
            )
        if not self.app_password.get_secret_value():
            raise ValueError("app_password is empty; set DB_PASSWORD or database.app_password")
        return self


# ttl, loop_wait, retry_timeout. 'fast' is the tightest Patroni accepts (it raises a ttl below 20
# and a retry_timeout below 3). retry_timeout / 2 is how long Patroni keeps retrying a postgres
# that stopped answering before it restarts it: 3 instead of 4 takes 0.5 s off a crash.
TIMING_PROFILES: dict[str, tuple[int, int, int]] = {
    "fast": (20, 1, 3),
    "default": (30, 10, 10),
    "safe": (60, 10, 25),
}
FailoverMode = Literal["automatic", "manual"]
ReplicationMode = Literal["async", "sync", "sync-strict"]


class PatroniSpec(_Strict):
    scope: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,62}$")] = "video"
    failover: FailoverMode = "automatic"
    replication: ReplicationMode = "async"
    profile: Literal["fast", "default", "safe"] = "fast"
    ttl: Annotated[int, Field(ge=20, le=3600)] | None = None
    loop_wait: Annotated[int, Field(ge=1, le=600)] | None = None
    retry_timeout: Annotated[int, Field(ge=3, le=600)] | None = None
    maximum_lag_on_failover: Annotated[int, Field(ge=0)] = 1_048_576
    primary_start_timeout: Annotated[int, Field(ge=0, le=3600)] = 30
    # How often Patroni polls a stopping PostgreSQL (its STOP_POLLING_INTERVAL, 1 s in Patroni;
    # cluster/patroni_launch.py sets it, and says why not below 0.25). Every switchover waits one
    # poll; 1 restores Patroni's own.
    stop_poll_s: Annotated[float, Field(ge=0.01, le=1)] = 0.25

    def timings(self) -> tuple[int, int, int]:
        """(ttl, loop_wait, retry_timeout): the profile's, with any explicit value on top."""
        ttl, loop_wait, retry = TIMING_PROFILES[self.profile]
        return (
            self.ttl if self.ttl is not None else ttl,
            self.loop_wait if self.loop_wait is not None else loop_wait,
            self.retry_timeout if self.retry_timeout is not None else retry,
        )

    @model_validator(mode="after")
    def _timings_fit(self) -> PatroniSpec:
        ttl, loop_wait, retry = self.timings()
        if loop_wait + 2 * retry > ttl:
            raise ValueError(
                f"loop_wait + 2*retry_timeout must not exceed ttl, got "
                f"{loop_wait} + 2*{retry} > {ttl}"
            )
        return self


class PostgresSpec(_Strict):
    bin_dir: Path = Path("/usr/lib/postgresql/15/bin")
    parameters: dict[str, ParamValue] = Field(default_factory=lambda: dict(GUIDE_PARAMETERS))


ServiceName = Literal["upload", "metadata", "streaming"]


class AppsSpec(_Strict):
    """The three applications (upload, metadata, streaming) and the web port in front of them."""

    web_port: Port = 8080  # HAProxy: the page and every API on one address
    upload_port: Port = 8081
    metadata_port: Port = 8082
    streaming_port: Port = 8083
    storage_dir: Path | None = None  # default: videos/ in the state directory
    max_upload_mb: Annotated[int, Field(ge=1, le=1_048_576)] = 1024
    view_flush_s: Annotated[float, Field(gt=0, le=3600)] = 2.0
    # An upload retried with the same Idempotency-Key within this many hours returns the first
    # result; older keys are forgotten by the upload service (checked every hour at most).
    idempotency_ttl_h: Annotated[float, Field(gt=0, le=24 * 365)] = 24.0
    autostart: bool = True  # 'start video' starts the applications after the cluster
    # How the applications reach PostgreSQL: "haproxy" (the guide's write and read ports) or
    # "direct" (libpq multi-host to the nodes, no proxy hop; docs/operator-guide.md, "Routing").
    routing: Literal["haproxy", "direct"] = "haproxy"

    def service_ports(self) -> dict[ServiceName, int]:
        """Each application's own port, by service name: the one place they are listed."""
        return {
            "upload": self.upload_port,
            "metadata": self.metadata_port,
            "streaming": self.streaming_port,
        }


class StorageSpec(_Strict):
    """Where the videos' bytes live: a local directory, SeaweedFS run by the platform, or any S3.

    "local": `apps.storage_dir` on the application host (one application host only: another
    host cannot read it). "seaweedfs": the platform runs SeaweedFS (masters and volume servers
    where etcd runs, a filer with its S3 gateway where the applications run; every object on two
    volume servers, of two hosts across hosts) and the applications use its S3 API. "s3": any
    S3 endpoint (`endpoint`, `bucket`, `access_key`, `secret_key`), nothing run by the platform.
    """

    backend: Literal["local", "seaweedfs", "s3"] = "local"
    bucket: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")] = "videos"
    prefix: Annotated[str, Field(pattern=r"^([A-Za-z0-9._-]+/)*$")] = ""  # e.g. "platform/"
    endpoint: Annotated[str, Field(pattern=r"^https?://[^/\s]+/?$")] | None = None  # s3 only
    region: str = "us-east-1"
    access_key: str | None = None  # s3 only (seaweedfs: the platform's own identity)
    secret_key: SecretStr | None = None  # s3 only; VIDEODB__STORAGE__SECRET_KEY
    # Multipart uploads: the request's bytes go to S3 in parts of this size as they arrive (at
    # most two parts of one upload in memory). S3 refuses parts under 5 MiB but the last.
    part_mb: Annotated[int, Field(ge=5, le=512)] = 8
    # Bytes no video names (an upload that died between its bytes and its row, a poster of a
    # refused upload) are removed by the upload service once older than this.
    sweep_grace_h: Annotated[float, Field(gt=0, le=24 * 365)] = 1.0
    # SeaweedFS's servers (backend "seaweedfs"): each with its HTTP and its gRPC port.
    master_port: Port = 9333
    master_grpc_port: Port = 19333
    # The volume servers: on one machine one per entry (two: every object on both); across
    # hosts one per database host, on the first port (each host a rack: every object on two).
    volume_ports: Annotated[list[Port], Field(min_length=1, max_length=4)] = Field(
        default_factory=lambda: [8091, 8092]
    )
    volume_grpc_ports: Annotated[list[Port], Field(min_length=1, max_length=4)] = Field(
        default_factory=lambda: [18091, 18092]
    )
    filer_port: Port = 8888
    filer_grpc_port: Port = 18888
    s3_port: Port = 8333
    s3_grpc_port: Port = 18333

    @model_validator(mode="after")
    def _complete(self) -> StorageSpec:
        if len(self.volume_ports) != len(self.volume_grpc_ports):
            raise ValueError(
                f"storage.volume_ports {self.volume_ports} and storage.volume_grpc_ports "
                f"{self.volume_grpc_ports} must have as many entries (one gRPC port per server)"
            )
        if self.backend == "s3":
            missing = [
                key
                for key, value in (
                    ("endpoint", self.endpoint),
                    ("access_key", self.access_key),
                    ("secret_key", self.secret_key),
                )
                if value is None
            ]
            if missing:
                raise ValueError(
                    f'storage.backend = "s3" needs {", ".join("storage." + m for m in missing)}'
                    ' (e.g. endpoint = "https://s3.example.net"; the secret key best through '
                    "VIDEODB__STORAGE__SECRET_KEY)"
                )
        return self

    def seaweedfs_ports(self, servers: bool, gateway: bool, one_volume: bool) -> dict[str, int]:
        """The ports SeaweedFS listens on, on a host running its servers and/or its gateway
        (`one_volume`: across hosts, one volume server per host)."""
        ports: dict[str, int] = {}
        if servers:
            ports["seaweedfs master"] = self.master_port
            ports["seaweedfs master grpc"] = self.master_grpc_port
            volumes = list(zip(self.volume_ports, self.volume_grpc_ports, strict=True))
            for i, (port, grpc) in enumerate(volumes[:1] if one_volume else volumes, start=1):
                ports[f"seaweedfs volume {i}"] = port
                ports[f"seaweedfs volume {i} grpc"] = grpc
        if gateway:
            ports["seaweedfs filer"] = self.filer_port
            ports["seaweedfs filer grpc"] = self.filer_grpc_port
            ports["seaweedfs s3"] = self.s3_port
            ports["seaweedfs s3 grpc"] = self.s3_grpc_port
        return ports


class BackupSpec(_Strict):
    """The backup repository: base backups, dumps, and the continuous WAL archive."""

    repo_dir: Path | None = None  # default: backups/ in the state directory
    archive_timeout_s: Annotated[int, Field(ge=0, le=86_400)] = 60  # 0: switch only when full


class MonitoringSpec(_Strict):
    """Prometheus, Alertmanager and the exporters (cluster/monitoring.py), under supervisord.

    Prometheus and Alertmanager run where the applications run (on one machine: there); a
    node exporter on every host, a postgres_exporter beside every PostgreSQL node, the backup
    scheduler on the first application host. Every one listens on its host's address only.
    """

    enabled: bool = True
    prometheus_port: Port = 9090
    alertmanager_port: Port = 9093
    alertmanager_cluster_port: Port = 9094  # Alertmanagers of several hosts deduplicate
    node_exporter_port: Port = 9100
    postgres_exporter_port: Port = 9187  # the first node's; node i gets this + i
    scheduler_port: Port = 9180  # the backup scheduler's /metrics
    retention: Annotated[str, Field(pattern=r"^\d+(h|d|w|y)$")] = "15d"
    scrape_interval_s: Annotated[int, Field(ge=1, le=300)] = 10
    # A condition must hold this long before its alert fires (a blip is not paged)
    alert_for_s: Annotated[int, Field(ge=0, le=3600)] = 30
    # Thresholds: the guide's "replication lag > 5 seconds", free disk on any volume holding a
    # node's data and WAL or the backups, connections against max_connections, the
    # applications' share of 5xx answers and their p99 latency, WAL waiting to be archived.
    lag_max_s: Annotated[float, Field(gt=0)] = 5.0
    disk_free_min_percent: Annotated[float, Field(ge=0, le=100)] = 10.0
    connections_max_percent: Annotated[float, Field(gt=0, le=100)] = 80.0
    error_ratio_max: Annotated[float, Field(gt=0, le=1)] = 0.05
    p99_max_s: Annotated[float, Field(gt=0)] = 1.0
    archive_ready_max: Annotated[int, Field(ge=1)] = 8  # WAL segments not archived yet
    failover_window_m: Annotated[int, Field(ge=1, le=1440)] = 15  # "a failover happened" lasts
    # Where Alertmanager delivers (a POST of its webhook JSON); unset: shown by 'alerts' only
    webhook_url: Annotated[str, Field(pattern=r"^https?://\S+$")] | None = None
    group_wait_s: Annotated[int, Field(ge=0, le=600)] = 10
    repeat_interval: Annotated[str, Field(pattern=r"^\d+(s|m|h)$")] = "4h"


class DrillSpec(_Strict):
    """How `failover-test --fault isolate-host|lose-host` acts on a host of a cluster file.

    Shell commands, with {host} (its name) and {address} replaced: cutting a machine off or
    switching it off is done differently everywhere (a switch port, a cloud API, IPMI, ssh).
    """

    isolate_command: str | None = None  # cut the host off the network; its processes keep running
    heal_command: str | None = None  # reconnect it
    lose_command: str | None = None  # the machine is gone (power off, every process killed)
    restore_command: str | None = None  # it is back: boot it and start its part ('start video')
    command_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 300.0


def _default_nodes() -> list[NodeSpec]:
    return [
        NodeSpec(name="postgres-video-master", port=5433, api_port=8008),
        NodeSpec(name="postgres-video-slave", port=5434, api_port=8009),
    ]


class Settings(_Strict):
    """The whole platform's desired configuration."""

    state_dir: Path | None = None
    # Added to every port below when the settings are loaded (--port-offset): a second platform
    # beside the first; its default state directory is .state-<offset>.
    port_offset: Annotated[int, Field(ge=0, le=60_000)] = 0
    listen_host: str = "127.0.0.1"  # the single host's address when `hosts` is empty
    # The topology: empty means one host ('local', at listen_host) running everything. A cluster
    # file lists every host; `host` (--host) says which one this machine is.
    hosts: Annotated[list[HostSpec], Field(max_length=16)] = Field(default_factory=list)
    host: Annotated[str, Field(pattern=f"^{NODE_NAME_PATTERN}$")] | None = None
    # The shared secrets of a cluster across hosts ('cluster init'); --cluster FILE sets it to
    # FILE.secrets. Unset on one machine: the state directory makes its own.
    secrets_bundle: Path | None = None
    nodes: Annotated[list[NodeSpec], Field(min_length=2, max_length=9)] = Field(
        default_factory=_default_nodes
    )
    etcd: EtcdSpec = Field(default_factory=EtcdSpec)
    haproxy: HAProxySpec = Field(default_factory=HAProxySpec)
    database: DatabaseSpec = Field(default_factory=DatabaseSpec)
    patroni: PatroniSpec = Field(default_factory=PatroniSpec)
    postgresql: PostgresSpec = Field(default_factory=PostgresSpec)
    apps: AppsSpec = Field(default_factory=AppsSpec)
    backup: BackupSpec = Field(default_factory=BackupSpec)
    drill: DrillSpec = Field(default_factory=DrillSpec)
    tls: TLSSpec = Field(default_factory=TLSSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        try:
            address = ipaddress.ip_address(self.listen_host)
        except ValueError as exc:
            raise ValueError(f"listen_host {self.listen_host!r} is not an IP address") from exc
        if not self.hosts and not address.is_loopback:
            raise ValueError(
                f"listen_host {self.listen_host!r} is not a loopback address; one machine "
                "listens on 127.0.0.0/8 only (list [[hosts]] for a cluster across machines)"
            )
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise ValueError(f"node names must be unique, got {names}")
        self._check_topology()
        if self.storage.backend == "local" and sum(h.apps for h in self.topology_hosts()) > 1:
            raise ValueError(
                'storage.backend = "local" keeps the videos on one application host, and this '
                'cluster has several: use "seaweedfs" (run by the platform on these hosts) or "s3"'
            )
        for host in self.topology_hosts():
            seen: dict[int, str] = {}
            for what, port in self.ports_on(host).items():
                if port in seen:
                    raise ValueError(
                        f"port {port} is given to both {seen[port]} and {what}"
                        + (f" on host {host.name}" if self.hosts else "")
                    )
                seen[port] = what
        return self

    def _check_topology(self) -> None:
        hosts = self.topology_hosts()
        host_names = [h.name for h in hosts]
        if len(set(host_names)) != len(host_names):
            raise ValueError(f"host names must be unique, got {host_names}")
        addresses = [h.address for h in hosts]
        if len(set(addresses)) != len(addresses):
            raise ValueError(f"host addresses must be unique, got {addresses}")
        for node in self.nodes:
            if node.host is None and self.hosts:
                raise ValueError(
                    f"node {node.name} names no host; with [[hosts]] listed, give each node "
                    f"host = one of {host_names}"
                )
            if node.host is not None and node.host not in host_names:
                raise ValueError(f"node {node.name}: host {node.host!r} is not one of {host_names}")
        if not any(h.etcd for h in hosts):
            raise ValueError("no host runs etcd; set etcd = true on one host (three for a quorum)")
        if self.hosts and self.secrets_bundle is None:
            raise ValueError(
                "a cluster of several hosts needs its shared secrets: pass the cluster file with "
                "--cluster FILE (its bundle FILE.secrets comes from 'platform.sh cluster init')"
            )
        if self.host is not None and self.host not in host_names:
            raise ValueError(f"host {self.host!r} (--host) is not one of {host_names}")

    # -- the topology -------------------------------------------------------------------------

    def topology_hosts(self) -> list[HostSpec]:
        """Every host; the default is one host at listen_host running everything."""
        return list(self.hosts) or [HostSpec(name=LOCAL_HOST, address=self.listen_host)]

    @property
    def multi_host(self) -> bool:
        return len(self.topology_hosts()) > 1

    def host_spec(self, name: str) -> HostSpec:
        for host in self.topology_hosts():
            if host.name == name:
                return host
        known = ", ".join(h.name for h in self.topology_hosts())
        raise ConfigError(f"no host named {name!r}; the hosts are: {known}")

    def this_host(self) -> HostSpec:
        """The host this command runs on: --host, or the only one."""
        hosts = self.topology_hosts()
        if self.host is not None:
            return self.host_spec(self.host)
        if len(hosts) == 1:
            return hosts[0]
        raise ConfigError(
            f"the cluster file lists {len(hosts)} hosts ({', '.join(h.name for h in hosts)}); "
            "say which one this machine is with --host NAME"
        )

    @property
    def address(self) -> str:
        """This host's address: where its services listen and its local tools connect."""
        return self.this_host().address

    def node_host(self, node: NodeSpec) -> HostSpec:
        return self.host_spec(node.host) if node.host else self.topology_hosts()[0]

    def node_address(self, node: NodeSpec) -> str:
        return self.node_host(node).address

    def nodes_on(self, host: HostSpec) -> list[NodeSpec]:
        return [n for n in self.nodes if self.node_host(n).name == host.name]

    def local_nodes(self) -> list[NodeSpec]:
        """The PostgreSQL nodes this host runs."""
        return self.nodes_on(self.this_host())

    def etcd_hosts(self) -> list[HostSpec]:
        return [h for h in self.topology_hosts() if h.etcd]

    def etcd_client_url(self, host: HostSpec) -> str:
        """etcd's client URL on `host`: TLS with client certificates (cluster/tls.py)."""
        return f"https://{host.address}:{self.etcd.client_port}"

    def etcd_client_urls(self) -> list[str]:
        return [self.etcd_client_url(h) for h in self.etcd_hosts()]

    def postgres_tls_name(self) -> str:
        """The DNS name in every PostgreSQL server certificate, whichever host or port a client
        reaches it through (HAProxy passes TLS through): what `sslmode=verify-full` checks when
        the client connects with host=<this name> hostaddr=<HAProxy's address>."""
        return f"{self.patroni.scope}-postgres"

    def ports_on(self, host: HostSpec) -> dict[str, int]:
        """Every TCP port `host` listens on, by what listens there."""
        ports: dict[str, int] = {}
        for node in self.nodes_on(host):
            ports[f"{node.name} (postgres)"] = node.port
            ports[f"{node.name} (patroni api)"] = node.api_port
        if host.etcd:
            ports["etcd client"] = self.etcd.client_port
            ports["etcd peer"] = self.etcd.peer_port
        if host.haproxy:
            ports["haproxy write"] = self.haproxy.write_port
            ports["haproxy read"] = self.haproxy.read_port
            ports["haproxy stats"] = self.haproxy.stats_port
        if host.apps:
            ports.update(self.app_ports())
        if self.monitoring.enabled:
            ports.update(self.monitoring_ports_on(host))
        if self.storage.backend == "seaweedfs":
            ports.update(
                self.storage.seaweedfs_ports(
                    self.runs_storage_servers(host),
                    host.apps,
                    len(self.storage_server_hosts()) > 1,
                )
            )
        return ports

    def monitoring_hosts(self) -> list[HostSpec]:
        """Where Prometheus and Alertmanager run: the application hosts (else the first)."""
        if not self.monitoring.enabled:
            return []
        hosts = self.topology_hosts()
        return [h for h in hosts if h.apps] or hosts[:1]

    def scheduler_host(self) -> HostSpec | None:
        """Where the backup scheduler runs: the first monitoring host."""
        hosts = self.monitoring_hosts()
        return hosts[0] if hosts else None

    def exporter_port(self, node: NodeSpec) -> int:
        if node.exporter_port is not None:
            return node.exporter_port
        return self.monitoring.postgres_exporter_port + self.nodes.index(node)

    def monitoring_ports_on(self, host: HostSpec) -> dict[str, int]:
        m = self.monitoring
        ports = {"node exporter": m.node_exporter_port}
        for node in self.nodes_on(host):
            ports[f"{node.name} (postgres exporter)"] = self.exporter_port(node)
        if host in self.monitoring_hosts():
            ports["prometheus"] = m.prometheus_port
            ports["alertmanager"] = m.alertmanager_port
            if len(self.monitoring_hosts()) > 1:
                ports["alertmanager cluster"] = m.alertmanager_cluster_port
        if host == self.scheduler_host():
            ports["backup scheduler"] = m.scheduler_port
        return ports

    def runs_storage_servers(self, host: HostSpec) -> bool:
        """SeaweedFS's master and volume servers run where etcd runs (the database hosts)."""
        return self.storage.backend == "seaweedfs" and host.etcd

    def storage_server_hosts(self) -> list[HostSpec]:
        return [h for h in self.topology_hosts() if self.runs_storage_servers(h)]

    def all_ports(self) -> dict[str, int]:
        """Every TCP port this host listens on, by what listens there."""
        return self.ports_on(self.this_host())

    def app_ports(self) -> dict[str, int]:
        services = {f"{name} app": port for name, port in self.apps.service_ports().items()}
        return {"web (haproxy)": self.apps.web_port, **services}

    def node(self, name: str) -> NodeSpec:
        for node in self.nodes:
            if node.name == name:
                return node
        known = ", ".join(n.name for n in self.nodes)
        raise ConfigError(f"no node named {name!r}; the nodes are: {known}")

    def uses_dev_password(self) -> bool:
        return self.database.app_password.get_secret_value() == DEV_APP_PASSWORD


@dataclass
class LoadedSettings:
    """Settings plus where each overridden key came from (for messages and `config`)."""

    settings: Settings
    config_file: Path | None
    sources: dict[str, str] = field(default_factory=dict)


def default_config_file(home: Path) -> Path:
    return home / "config" / "platform.toml"


def _set_path(tree: dict[str, Any], path: Sequence[str], value: Any, source: str) -> None:
    node: Any = tree
    for i, key in enumerate(path[:-1]):
        nxt = path[i + 1]
        if isinstance(node, list):
            idx = _index(node, key, path, source)
            node = node[idx]
        else:
            if key not in node or not isinstance(node[key], dict | list):
                node[key] = [] if nxt.isdigit() and key in ("nodes", "hosts") else {}
            node = node[key]
        if not isinstance(node, dict | list):
            above = ".".join(path[: i + 1])
            raise ConfigError(
                f"{source}: key {'.'.join(path)}: {above} holds the value {node!r}, not a table "
                f"of keys; set {above} as a whole or its keys, not both"
            )
    last = path[-1]
    if isinstance(node, list):
        node[_index(node, last, path, source)] = value
    else:
        node[last] = value


def _index(items: list[Any], key: str, path: Sequence[str], source: str) -> int:
    dotted = ".".join(path)
    if not key.isdigit():
        raise ConfigError(f"{source}: key {dotted}: {key!r} is not a list index (0, 1, ...)")
    idx = int(key)
    if idx == len(items):
        items.append({})
    elif idx > len(items):
        raise ConfigError(
            f"{source}: key {dotted}: index {idx} is past the end of a list of {len(items)}"
        )
    return idx


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist; pass an existing file") from exc
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, dotted + "."))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            for i, item in enumerate(value):
                flat.update(_flatten(item, f"{dotted}.{i}."))
        else:
            flat[dotted] = value
    return flat


def _env_overrides(env: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """(dotted key, value, source) from the environment."""
    found: list[tuple[str, str, str]] = []
    if "VIDEODB_STATE_DIR" in env:
        found.append(("state_dir", env["VIDEODB_STATE_DIR"], "environment VIDEODB_STATE_DIR"))
    if "VIDEODB_PORT_OFFSET" in env:
        found.append(("port_offset", env["VIDEODB_PORT_OFFSET"], "environment VIDEODB_PORT_OFFSET"))
    for var, key in (
        ("DB_USERNAME", "database.app_user"),
        ("DB_PASSWORD", "database.app_password"),
    ):
        if var in env:
            found.append((key, env[var], f"environment {var}"))
    for var, value in sorted(env.items()):
        if var.startswith(ENV_PREFIX) and len(var) > len(ENV_PREFIX):
            key = var[len(ENV_PREFIX) :].lower().replace("__", ".")
            found.append((key, value, f"environment {var}"))
    return found


_ASSIGNMENT = re.compile(r"^([a-z0-9_.]+)=(.*)$", re.DOTALL)


def parse_assignments(items: Sequence[str]) -> list[tuple[str, str, str]]:
    """`--set key=value` flags as (dotted key, value, source)."""
    parsed = []
    for item in items:
        match = _ASSIGNMENT.match(item.strip())
        if not match:
            raise ConfigError(
                f"flag --set {item!r} is not KEY=VALUE with a dotted lower-case key, "
                "e.g. --set haproxy.write_port=6435"
            )
        parsed.append((match.group(1), match.group(2), f"flag --set {match.group(1)}"))
    return parsed


def load_settings(
    config_file: Path | None,
    *,
    env: Mapping[str, str] | None = None,
    assignments: Sequence[str] = (),
    require_file: bool = False,
    flag_names: Mapping[str, str] | None = None,
) -> LoadedSettings:
    """Merge defaults, the TOML file, the environment and `--set` flags, then validate.

    `flag_names` names the command-line flag behind an assignment (patroni.failover: --failover)
    for error messages.
    """
    env = os.environ if env is None else env
    tree: dict[str, Any] = Settings().model_dump(mode="python")
    tree["database"]["app_password"] = DEV_APP_PASSWORD
    sources: dict[str, str] = {}
    if config_file is not None and (require_file or config_file.exists()):
        file_tree = _read_toml(config_file)
        for key, value in _flatten(file_tree).items():
            _set_path(tree, key.split("."), value, str(config_file))
            sources[key] = str(config_file)
    else:
        config_file = None
    flags = [
        (key, value, f"flag {flag_names[key]}" if flag_names and key in flag_names else source)
        for key, value, source in parse_assignments(assignments)
    ]
    for key, value, source in [*_env_overrides(env), *flags]:
        _set_path(tree, key.split("."), value, source)
        sources[key] = source
    _shift_ports(tree, sources)
    try:
        settings = Settings.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, tree, sources, config_file)) from exc
    return LoadedSettings(settings=settings, config_file=config_file, sources=sources)


PORT_KEYS: dict[str, tuple[str, ...]] = {
    "etcd": ("client_port", "peer_port"),
    "haproxy": ("write_port", "read_port", "stats_port"),
    "apps": ("web_port", "upload_port", "metadata_port", "streaming_port"),
    "storage": (
        "master_port",
        "master_grpc_port",
        "volume_ports",
        "volume_grpc_ports",
        "filer_port",
        "filer_grpc_port",
        "s3_port",
        "s3_grpc_port",
    ),
    "monitoring": (
        "prometheus_port",
        "alertmanager_port",
        "alertmanager_cluster_port",
        "node_exporter_port",
        "postgres_exporter_port",
        "scheduler_port",
    ),
}


def _shift_ports(tree: dict[str, Any], sources: Mapping[str, str]) -> None:
    """Add `port_offset` to every port in the merged settings (nodes, etcd, HAProxy, apps)."""
    raw = tree.get("port_offset", 0)
    source = sources.get("port_offset", "defaults")
    try:
        offset = int(raw)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{source}: port_offset {raw!r} is not a whole number; e.g. --port-offset 100"
        ) from None
    if offset == 0:
        return
    if offset < 0:
        raise ConfigError(f"{source}: port_offset {offset} is negative; give 0 or more")
    places: list[tuple[dict[str, Any], str, str]] = []
    for i, node in enumerate(tree.get("nodes") or []):
        if isinstance(node, dict):
            node_keys = ("port", "api_port", "exporter_port")
            places += [(node, k, f"nodes.{i}.{k}") for k in node_keys if k in node]
    for section, keys in PORT_KEYS.items():
        table = tree.get(section)
        if isinstance(table, dict):
            places += [(table, k, f"{section}.{k}") for k in keys if k in table]

    def shifted(value: Any, dotted: str) -> Any:
        if isinstance(value, list):  # storage.volume_ports
            return [shifted(v, f"{dotted}.{i}") for i, v in enumerate(value)]
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)  # from --set or the environment: a string until validated
        if isinstance(value, int) and not isinstance(value, bool):
            if value + offset > 65535:
                raise ConfigError(
                    f"{source}: port_offset {offset} moves {dotted} ({value}) past 65535; "
                    "choose a smaller offset"
                )
            return value + offset
        return value

    for table, key, dotted in places:
        table[key] = shifted(table[key], dotted)
    tree["port_offset"] = offset


def _describe(
    exc: ValidationError, tree: Mapping[str, Any], sources: Mapping[str, str], file: Path | None
) -> str:
    lines = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        dotted = ".".join(loc)
        source = _source_for(dotted, sources) or (str(file) if file else "defaults")
        if error["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key {dotted!r}; see 'platform.sh config' for the keys")
            continue
        value = error.get("input")
        shown = "********" if "password" in dotted else repr(value)
        where = f"key {dotted}" if dotted else "settings"
        if isinstance(value, Mapping | list) and dotted:
            lines.append(f"{source}: {where}: {error['msg']}")
        else:
            lines.append(f"{source}: {where}: bad value {shown} ({error['msg']})")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _source_for(dotted: str, sources: Mapping[str, str]) -> str | None:
    if dotted in sources:
        return sources[dotted]
    prefixed = [src for key, src in sources.items() if key.startswith(dotted + ".")]
    if prefixed:
        return prefixed[-1]
    return None


def redacted(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data, with every secret replaced."""
    data = settings.model_dump(mode="json")
    data["database"]["app_password"] = "********"
    return data
