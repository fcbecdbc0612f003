"""Render the generated configuration files: Patroni (one per node), HAProxy, supervisord."""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from videodb.cluster.monitoring import programs as monitoring_programs
from videodb.cluster.seaweedfs import programs as seaweedfs_programs
from videodb.config import HostSpec, NodeSpec, Settings
from videodb.layout import ServiceUser, StateLayout, TLSFiles, tls_files
from videodb.secrets import ClusterSecrets
from videodb.wal_archive import archive_parameters

WRITE_BACKEND = "postgres_write"
READ_BACKEND = "postgres_read"
ETCD_PROGRAM = "etcd"
HAPROXY_PROGRAM = "haproxy-postgres"
APP_PROGRAMS = ("upload", "metadata", "streaming")  # supervisord programs = service names
APP_BACKENDS = {name: f"app_{name}" for name in APP_PROGRAMS}

# What replication, pg_rewind and quick promotion need (DESIGN.md, traps).
REPLICATION_PARAMETERS: dict[str, Any] = {
    "wal_level": "replica",
    "hot_standby": "on",
    "wal_log_hints": "on",
    "max_wal_senders": 10,
    "max_replication_slots": 10,
    "wal_keep_size": "256MB",
    "wal_retrieve_retry_interval": "100ms",
    # Replica reads are not cancelled by the cleanup of rows they may still need (SQLSTATE
    # 40001 "conflict with recovery"); the price is that the primary keeps those rows longer.
    "hot_standby_feedback": "on",
    "password_encryption": "scram-sha-256",
}


# How fast a cut link is noticed. A replica cut off from its primary stops being 'streaming' (and
# leaves the read port) after wal_receiver_timeout; a primary drops a cut-off standby after
# wal_sender_timeout, so that Patroni names another synchronous standby. PostgreSQL's 60 s
# defaults would keep writes waiting on a synchronous standby that is gone for a minute.
LINK_TIMEOUTS: dict[str, Any] = {
    "wal_receiver_timeout": "5s",
    "wal_receiver_status_interval": "1s",
    "wal_sender_timeout": "5s",
}


ETCD_CIPHERS = (
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
)


@dataclass(frozen=True)
class Toolchain:
    """Absolute paths of the executables the generated configs name."""

    etcd: Path
    haproxy: Path
    pg_bin: Path
    python: Path  # the environment's interpreter, which runs the applications


def _cidr(address: str) -> str:
    return f"{address}/{ipaddress.ip_address(address).max_prefixlen}"


def pg_hba(settings: Settings) -> list[str]:
    """Only the cluster's own hosts, over TLS (`hostssl`: plaintext from another host matches no
    line and is refused); everything else rejected. Loopback may skip TLS (local tools).

    Replication is open to the replication role only, with a client certificate (`cert`: its CN
    is the role; the role has no password), and that role is refused every ordinary database, so
    it cannot read application data. Patroni writes this at every start and reload.
    """
    db = settings.database
    loopback = "127.0.0.1/32"
    remote = [c for c in (_cidr(h.address) for h in settings.topology_hosts()) if c != loopback]
    return [
        f"local all {db.replication_user} reject",
        f"local all {db.monitor_user} reject",
        "local all all scram-sha-256",
        *(f"hostssl replication {db.replication_user} {s} cert" for s in [loopback, *remote]),
        f"host all {db.replication_user} 0.0.0.0/0 reject",
        # The monitoring role: its certificate, to the postgres database only.
        *(f"hostssl postgres {db.monitor_user} {s} cert" for s in [loopback, *remote]),
        f"host all {db.monitor_user} 0.0.0.0/0 reject",
        f"host all all {loopback} scram-sha-256",
        *(f"hostssl all all {s} scram-sha-256" for s in remote),
        "host all all 0.0.0.0/0 reject",
        "host all all ::/0 reject",
    ]


def postgres_tls_parameters(files: TLSFiles) -> dict[str, Any]:
    """TLS 1.2 at least; certificate and key reloaded with the configuration (SIGHUP)."""
    return {
        "ssl": "on",
        "ssl_cert_file": str(files.cert),
        "ssl_key_file": str(files.key),
        "ssl_ca_file": str(files.ca),
        "ssl_min_protocol_version": "TLSv1.2",
    }


def verify_full(files: TLSFiles) -> dict[str, str]:
    return {"sslmode": "verify-full", "sslrootcert": str(files.ca)}


def _listen(address: str, port: int) -> str:
    """The host's address, and loopback too (for local tools) when that address is not."""
    if ipaddress.ip_address(address).is_loopback:
        return f"{address}:{port}"
    return f"{address},127.0.0.1:{port}"


def local_parameters(settings: Settings, layout: StateLayout, node: NodeSpec) -> dict[str, Any]:
    """PostgreSQL parameters in each node's own Patroni file. They take precedence over
    Patroni's dynamic (DCS) configuration and are re-rendered at every start, so a changed
    config/platform.toml applies on restart ('edit-config' refuses to change them)."""
    tls = tls_files(layout)
    return {
        **LINK_TIMEOUTS,
        **settings.postgresql.parameters,
        "unix_socket_directories": str(layout.service_run),
        "logging_collector": "on",
        "log_directory": str(layout.postgres_log_dir(node.name)),
        # One file per weekday, truncated when its day comes round again: a week of logs, and
        # never more (log_connections on a busy platform would otherwise fill the disk).
        "log_filename": "postgresql-%a.log",
        "log_truncate_on_rotation": "on",
        "log_rotation_age": "1d",
        "log_rotation_size": 0,  # by day only: a size rotation would append to the same file
        "log_file_mode": "0640",
        "log_line_prefix": "%m [%p] %q%u@%d ",
        "log_connections": "on",
        **postgres_tls_parameters(tls),
        **archive_parameters(layout.archive_script(), settings.backup.archive_timeout_s),
    }


def patroni_config(
    settings: Settings,
    layout: StateLayout,
    node: NodeSpec,
    secrets: ClusterSecrets,
    tools: Toolchain,
) -> dict[str, Any]:
    host = settings.node_address(node)
    p = settings.patroni
    db = settings.database
    tls = tls_files(layout)
    local = local_parameters(settings, layout, node)
    return {
        "scope": p.scope,
        "namespace": "/videodb/",
        "name": node.name,
        "log": {"level": "INFO", "format": "%(asctime)s %(levelname)s: %(message)s"},
        "restapi": {
            "listen": f"{host}:{node.api_port}",
            "connect_address": f"{host}:{node.api_port}",
            "authentication": {"username": "patroni", "password": secrets.api_password},
            # HTTPS; the unsafe endpoints (POST, PATCH...) want a client certificate from the
            # cluster CA as well as the password; health checks (GET) need none.
            "certfile": str(tls.cert),
            "keyfile": str(tls.key),
            "cafile": str(tls.ca),
            "verify_client": "optional",
        },
        # How this Patroni calls the other members (failsafe, pre-promotion checks): verified,
        # with its own certificate.
        "ctl": {
            "insecure": False,
            "certfile": str(tls.cert),
            "keyfile": str(tls.key),
            "cacert": str(tls.ca),
        },
        "etcd3": {
            "hosts": [f"{h.address}:{settings.etcd.client_port}" for h in settings.etcd_hosts()],
            "protocol": "https",
            "cacert": str(tls.ca),
            "cert": str(tls.cert),
            "key": str(tls.key),
        },
        "bootstrap": {
            "dcs": {
                **dynamic_config(settings, include_pause=False),
                "postgresql": {
                    "use_pg_rewind": True,
                    "use_slots": True,
                    "parameters": REPLICATION_PARAMETERS,
                },
            },
            "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}, "data-checksums"],
        },
        "postgresql": {
            "listen": _listen(host, node.port),
            "connect_address": f"{host}:{node.port}",
            "data_dir": str(layout.node_data(node.name)),
            "bin_dir": str(tools.pg_bin),
            "pgpass": str(layout.service_run / f"pgpass-{node.name}"),
            "authentication": {
                "superuser": {
                    "username": db.superuser,
                    "password": secrets.superuser_password,
                    **verify_full(tls),
                },
                "replication": {
                    "username": db.replication_user,
                    **verify_full(tls),
                    "sslcert": str(tls.replicator_cert),
                    "sslkey": str(tls.replicator_key),
                },
                "rewind": {
                    "username": db.superuser,
                    "password": secrets.superuser_password,
                    **verify_full(tls),
                },
            },
            "parameters": local,
            "pg_hba": pg_hba(settings),
            "basebackup": [{"checkpoint": "fast"}],
            "create_replica_methods": ["basebackup"],
            "use_unix_socket": False,
            # When pg_rewind cannot bring a former master back, clone it afresh instead.
            "remove_data_directory_on_rewind_failure": True,
            "remove_data_directory_on_diverged_timelines": True,
        },
        "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False},
    }


def dynamic_config(settings: Settings, *, include_pause: bool = True) -> dict[str, Any]:
    """Patroni's cluster-wide settings that this config controls (kept in etcd).

    Applied at bootstrap and again at every start, since Patroni reads bootstrap.dcs only once.
    """
    p = settings.patroni
    ttl, loop_wait, retry_timeout = p.timings()
    config: dict[str, Any] = {
        "ttl": ttl,
        "loop_wait": loop_wait,
        "retry_timeout": retry_timeout,
        "maximum_lag_on_failover": p.maximum_lag_on_failover,
        "primary_start_timeout": p.primary_start_timeout,
        "failsafe_mode": True,
        "synchronous_mode": p.replication != "async",
        "synchronous_mode_strict": p.replication == "sync-strict",
    }
    if include_pause:
        config["pause"] = p.failover == "manual"
    return config


def render_patroni(config: dict[str, Any]) -> str:
    header = "# Generated by videodb from config/platform.toml; edits here are overwritten.\n"
    return header + yaml.safe_dump(config, sort_keys=False)


def read_check_path(settings: Settings) -> str:
    """The read port's health check (Patroni REST API), from haproxy.read_requires_streaming."""
    h = settings.haproxy
    streaming = h.read_requires_streaming
    if streaming is None:
        streaming = settings.multi_host
    lag = h.read_max_lag or ("16MB" if settings.multi_host else None)
    path = "/readiness" if streaming else "/read-only"
    return f"{path}?lag={lag}" if lag else path


def haproxy_socket(layout: StateLayout) -> Path:
    return layout.service_run / "haproxy.sock"


def haproxy_state_file(layout: StateLayout) -> Path:
    """Servers' states saved before a reload, loaded by the new worker (haproxy_admin)."""
    return layout.run / "haproxy-servers.state"


# Patroni's /primary answers 200 as soon as the node holds the leader lock, before PostgreSQL has
# left recovery: writes got SQLSTATE 25006 for about 0.6 s after each promotion. The body's "role"
# comes from pg_is_in_recovery(), so the write port also waits for PostgreSQL to be writable.
WRITABLE_PRIMARY = ('rstring \'"role": ?"primary"\'',)


def haproxy_config(settings: Settings, layout: StateLayout) -> str:
    """Write port: Patroni's /primary, with PostgreSQL out of recovery (WRITABLE_PRIMARY). Read
    port: /readiness?lag= (the primary, and the replicas that are streaming and within
    `haproxy.read_max_lag` of it; a replica cut off from the primary stops streaming and drops
    out).

    Only the health check marks a server DOWN (then its sessions are cut). A connection error
    seen on live traffic merely brings the next check forward (`on-error fastinter`): during a
    burst of new connections PostgreSQL's listen backlog overflows and some connects time out,
    and treating that as a dead master (`on-error mark-down`) cut every session to a healthy one.
    """
    h = settings.haproxy
    host = settings.address
    # Health checks over HTTPS to Patroni, verified against the cluster CA and the node's host
    # name. No `ssl` on the servers: PostgreSQL's own TLS passes through the TCP proxy untouched.
    server_opts = (
        f"check inter {h.check_interval_ms}ms fastinter {h.fast_interval_ms}ms "
        f"downinter {h.down_interval_ms}ms rise {h.rise} fall {h.fall} "
        "on-marked-down shutdown-sessions observe layer4 error-limit 1 on-error fastinter "
        f"check-ssl verify required ca-file {tls_files(layout).ca}"
    )

    def backend(
        name: str, port: int, check_path: str, balance: str, expect: tuple[str, ...] = ()
    ) -> list[str]:
        lines = [
            f"listen {name}",
            f"    bind {host}:{port}",
            f"    balance {balance}",
            f"    option httpchk GET {check_path}",
            "    http-check expect status 200",
            *(f"    http-check expect {rule}" for rule in expect),
            f"    default-server {server_opts}",
        ]
        lines += [
            f"    server {n.name} {settings.node_address(n)}:{n.port} check port {n.api_port} "
            f"verifyhost {settings.node_host(n).name}"
            for n in settings.nodes
        ]
        return [*lines, ""]

    lines = [
        "# Generated by videodb from config/platform.toml; edits here are overwritten.",
        "global",
        f"    maxconn {h.maxconn}",
        "    log stdout format raw local0 info",
        f"    stats socket {haproxy_socket(layout)} mode 600 level admin expose-fd listeners",
        f"    server-state-file {haproxy_state_file(layout)}",
        "",
        "defaults",
        "    mode tcp",
        "    load-server-state-from-file global",
        "    log global",
        "    option tcplog",
        "    option dontlognull",
        f"    timeout connect {h.timeout_connect}",
        f"    timeout client {h.timeout_client}",
        f"    timeout server {h.timeout_server}",
        "    timeout check 1s",
        "    retries 3",
        "    option redispatch 1",  # a refused connection is retried on another server at once
        "",
        *backend(WRITE_BACKEND, h.write_port, "/primary", "first", WRITABLE_PRIMARY),
        *backend(READ_BACKEND, h.read_port, read_check_path(settings), "roundrobin"),
        "listen stats",
        "    mode http",
        f"    bind {host}:{h.stats_port}",
        "    option dontlog-normal",
        "    timeout client 30s",
        "    timeout server 30s",
        "    http-request use-service prometheus-exporter if { path /metrics }",
        "    stats enable",
        "    stats uri /stats",
        "    stats refresh 5s",
        "    stats show-legends",
        "",
        *(web_frontend(settings) if settings.this_host().apps else []),
    ]
    return "\n".join(lines)


def web_frontend(settings: Settings) -> list[str]:
    """The page and the three APIs on one address, routed by path (and method for uploads)."""
    host = settings.address
    a = settings.apps
    h = settings.haproxy
    down = (
        "    http-error status 503 content-type application/json string "
        '\'{"error": {"status": 503, "message": "the application behind this path is '
        "not running; see platform.sh status, or start it with platform.sh start apps\"}}'"
    )
    lines = [
        "frontend web",
        "    mode http",
        f"    bind {host}:{a.web_port}",
        "    option httplog",
        "    option forwardfor",
        "    timeout http-request 30s",
        "    acl is_stream path_reg ^/api/videos/[^/]+/(stream|poster)$",
        "    acl is_collection path /api/videos /api/videos/",
        "    acl is_post method POST",
        f"    use_backend {APP_BACKENDS['streaming']} if is_stream",
        f"    use_backend {APP_BACKENDS['upload']} if is_collection is_post",
        f"    default_backend {APP_BACKENDS['metadata']}",
        "",
    ]
    for name, port in a.service_ports().items():
        lines += [
            f"backend {APP_BACKENDS[name]}",
            "    mode http",
            "    option httpchk GET /healthz",
            "    http-check expect status 200",
            "    retry-on conn-failure empty-response",
            down,
            f"    server {name} {host}:{port} check inter {h.check_interval_ms}ms "
            f"fastinter {h.fast_interval_ms}ms downinter {h.fast_interval_ms}ms rise 1 fall 2",
            "",
        ]
    return lines


def etcd_member_name(settings: Settings, host: HostSpec) -> str:
    """`<scope>-etcd` for a lone member (as it always was), `<scope>-etcd-<host>` in a quorum."""
    scope = settings.patroni.scope
    return f"{scope}-etcd" if len(settings.etcd_hosts()) == 1 else f"{scope}-etcd-{host.name}"


def etcd_peer_url(settings: Settings, host: HostSpec) -> str:
    return f"https://{host.address}:{settings.etcd.peer_port}"


def etcd_command(
    settings: Settings, layout: StateLayout, tools: Toolchain, join: str | None = None
) -> list[str]:
    """etcd for this host. `join`: the --initial-cluster of a running cluster this member was
    added to (as a learner); otherwise the cluster file's etcd hosts bootstrap a new one."""
    this = settings.this_host()
    e = settings.etcd
    peer = etcd_peer_url(settings, this)
    client = settings.etcd_client_url(this)
    listen_client = client
    if not ipaddress.ip_address(this.address).is_loopback:
        listen_client += f",https://127.0.0.1:{e.client_port}"
    tls = tls_files(layout)
    members = ",".join(
        f"{etcd_member_name(settings, h)}={etcd_peer_url(settings, h)}"
        for h in settings.etcd_hosts()
    )
    return [
        str(tools.etcd),
        f"--name={etcd_member_name(settings, this)}",
        f"--data-dir={layout.etcd_data()}",
        f"--listen-client-urls={listen_client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster={join or members}",
        f"--initial-cluster-state={'existing' if join else 'new'}",
        f"--initial-cluster-token={settings.patroni.scope}-{e.client_port}",
        # TLS both ways, client certificates from the cluster CA required (read at each new
        # connection, so 'rotate certs' needs no restart).
        f"--cert-file={tls.cert}",
        f"--key-file={tls.key}",
        f"--trusted-ca-file={tls.ca}",
        "--client-cert-auth",
        f"--peer-cert-file={tls.cert}",
        f"--peer-key-file={tls.key}",
        f"--peer-trusted-ca-file={tls.ca}",
        "--peer-client-cert-auth",
        # TLS 1.2 suites only (etcd 3.4 has no minimum-version flag; TLS 1.3 stays allowed)
        f"--cipher-suites={','.join(ETCD_CIPHERS)}",
        "--enable-v2=false",
        "--listen-metrics-urls=",
        "--logger=zap",
        "--log-outputs=stderr",
    ]


def supervisor_config(
    settings: Settings,
    layout: StateLayout,
    tools: Toolchain,
    user: ServiceUser,
    held_back: frozenset[str] = frozenset(),
    etcd_join: str | None = None,
) -> str:
    """supervisord runs every server in the foreground, restarts what crashes, and keeps logs.

    Programs in `held_back` are not started with supervisord; the caller starts them later.
    """
    as_user = "" if user.is_current else f"user={user.name}\n"
    env = f'environment=HOME="{layout.root}",LC_ALL="C.UTF-8",LANG="C.UTF-8"\n'

    def program(
        name: str,
        argv: list[str],
        stopwait: int,
        priority: int,
        autostart: bool = True,
        extra_env: dict[str, str] | None = None,
        service: bool = True,
    ) -> str:
        start = "false" if name in held_back or not autostart else "true"
        environment = env
        if extra_env:
            more = ",".join(f'{k}="{v}"' for k, v in extra_env.items())
            environment = env.rstrip("\n") + "," + more.replace("%", "%%") + "\n"
        return (
            f"[program:{name}]\n"
            f"command={shlex.join(argv).replace('%', '%%')}\n"
            f"{as_user if service else ''}{environment}"
            f"priority={priority}\n"
            f"autostart={start}\n"
            "autorestart=true\n"
            "startsecs=1\n"
            "startretries=1000\n"
            "stopsignal=TERM\n"
            f"stopwaitsecs={stopwait}\n"
            "stopasgroup=false\n"
            "killasgroup=false\n"
            "redirect_stderr=true\n"
            f"stdout_logfile={layout.program_log(name)}\n"
            "stdout_logfile_maxbytes=20MB\n"
            "stdout_logfile_backups=3\n\n"
        )

    text = (
        "; Generated by videodb; edits here are overwritten.\n"
        "[unix_http_server]\n"
        f"file={layout.supervisor_socket()}\n"
        "chmod=0700\n\n"
        "[supervisord]\n"
        f"logfile={layout.program_log('supervisord')}\n"
        f"pidfile={layout.supervisor_pidfile()}\n"
        f"childlogdir={layout.logs}\n"
        "logfile_maxbytes=5MB\n"
        "loglevel=info\n"
        "nodaemon=true\n"  # started by cluster/reaper.py, which detaches it
        "silent=true\n"
        "minfds=4096\n"
        f"directory={layout.root}\n\n"
        "[rpcinterface:supervisor]\n"
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
        "[supervisorctl]\n"
        f"serverurl=unix://{layout.supervisor_socket()}\n\n"
    )
    this = settings.this_host()
    if this.etcd:
        text += program(ETCD_PROGRAM, etcd_command(settings, layout, tools, etcd_join), 20, 10)
    for node in settings.local_nodes():
        # Patroni itself, with its shutdown poll shortened (cluster/patroni_launch.py).
        launch = "videodb.cluster.patroni_launch"
        poll = f"--stop-poll={settings.patroni.stop_poll_s:g}"
        argv = [str(tools.python), "-m", launch, poll, str(layout.patroni_config(node.name))]
        text += program(node.name, argv, 90, 20)
    if this.haproxy:
        # Master-worker mode: SIGUSR2 reloads a changed config; old workers finish their sessions.
        haproxy_argv = [str(tools.haproxy), "-W", "-db", "-f", str(layout.haproxy_config())]
        text += program(HAPROXY_PROGRAM, haproxy_argv, 10, 30)
    for weed in seaweedfs_programs(settings, layout, this):
        text += program(weed.name, weed.argv, weed.stop_wait_s, 35)
    for watcher in monitoring_programs(settings, layout, this):
        text += program(
            watcher.name, watcher.argv, 10, 45, extra_env=watcher.env, service=watcher.service_user
        )
    if this.apps:
        # The applications start after the cluster is healthy and the schema migrated.
        config = layout.apps_config()
        for name in APP_PROGRAMS:
            argv = [
                str(tools.python),
                "-m",
                "videodb.services.serve",
                name,
                "--config",
                str(config),
            ]
            text += program(name, argv, 15, 40, autostart=False)
    return text
