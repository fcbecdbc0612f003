"""`status`: every process of the platform with its host, role, pid, port and health.

On one host, only processes this state directory's supervisord runs are asked anything: a port
that another cluster (or anything else) holds while ours is stopped is never probed. Across hosts,
this host's processes are read from its supervisord and the other hosts' over the network (etcd's
/health, Patroni's REST API, HAProxy's stats page, the applications' /readyz), so any host shows
the whole cluster.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from videodb.cluster import monitoring, seaweedfs
from videodb.cluster.apps import app_states, readiness
from videodb.cluster.haproxy_stats import ServerStatus, fetch_server_status
from videodb.cluster.health import etcd_member_healthy
from videodb.cluster.patroni_api import MemberStatus, PatroniAPI, Role
from videodb.cluster.postmaster import postmaster_pid
from videodb.cluster.render import ETCD_PROGRAM, HAPROXY_PROGRAM
from videodb.cluster.supervisor import ProgramStatus, Supervisor, supervisord_pid
from videodb.cluster.tls import certificate_status, client_context
from videodb.config import HostSpec, NodeSpec, Settings
from videodb.errors import NotRunningError
from videodb.layout import StateLayout

REMOTE = "REMOTE"  # the state of a process on another host (its supervisord is not ours to ask)


@dataclass
class ServiceStatus:
    name: str
    role: str  # primary, replica, dcs, proxy, app, down
    state: str  # supervisord's state on this host; REMOTE on another host
    healthy: bool
    pid: int | None
    ports: dict[str, int]
    postgres_pid: int | None = None
    detail: str = ""
    host: str = ""


@dataclass
class PlatformStatus:
    running: bool
    state_dir: str
    supervisor_pid: int | None
    services: list[ServiceStatus] = field(default_factory=list)
    host: str = ""
    hosts: int = 1
    # this host's certificates (cluster/tls.py): file, role, subject, not_after, days_left...
    certificates: list[dict[str, Any]] = field(default_factory=list)

    @property
    def expired(self) -> list[str]:
        return [str(c["file"]) for c in self.certificates if float(c["days_left"]) <= 0]

    @property
    def healthy(self) -> bool:
        return self.running and all(s.healthy for s in self.services) and not self.expired

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "started": True, "healthy": self.healthy}


def never_started(layout: StateLayout) -> bool:
    """No platform was ever started in this state directory (no generated supervisord.conf)."""
    return not layout.supervisor_config().exists()


def platform_status(settings: Settings, layout: StateLayout) -> PlatformStatus:
    """What this host's state directory started, and the other hosts' processes if any."""
    sup_pid = supervisord_pid(layout)
    programs: dict[str, ProgramStatus] = {}
    if sup_pid is not None:
        try:
            programs = {p.name: p for p in Supervisor(layout).programs()}
        except NotRunningError:
            programs = {}
    this = settings.this_host()
    hosts = settings.topology_hosts()
    status = PlatformStatus(
        sup_pid is not None,
        str(layout.root),
        sup_pid,
        [],
        this.name,
        len(hosts),
        [c.to_json() for c in certificate_status(settings, layout)],
    )
    # Patroni is asked only about nodes that run here (under our supervisord) or elsewhere.
    asked = [
        n
        for n in settings.nodes
        if settings.node_host(n).name != this.name
        or (programs.get(n.name) and programs[n.name].state == "RUNNING")
    ]
    with ThreadPoolExecutor(max_workers=max(1, len(asked))) as pool:
        members = dict(
            zip([n.name for n in asked], pool.map(PatroniAPI(settings).member, asked), strict=True)
        )
    for host in hosts:
        local = host.name == this.name
        if host.etcd:
            status.services.append(_etcd(settings, host, programs if local else None))
        for node in settings.nodes_on(host):
            status.services.append(
                _node(
                    settings,
                    layout,
                    host,
                    node,
                    members.get(node.name),
                    programs if local else None,
                )
            )
        if host.haproxy:
            status.services.append(_haproxy(settings, host, programs if local else None))
        status.services += _storage(settings, layout, host, programs if local else None)
        status.services += _monitoring(settings, layout, host, programs if local else None)
        if host.apps:
            status.services += _apps(settings, layout, host, local)
    return status


def _storage(
    settings: Settings,
    layout: StateLayout,
    host: HostSpec,
    programs: dict[str, ProgramStatus] | None,
) -> list[ServiceStatus]:
    """SeaweedFS's servers on `host` (storage.backend = "seaweedfs")."""
    servers = [(w.name, dict(w.ports)) for w in seaweedfs.programs(settings, layout, host)]
    return _answering(host, programs, "storage", servers)


def _monitoring(
    settings: Settings,
    layout: StateLayout,
    host: HostSpec,
    programs: dict[str, ProgramStatus] | None,
) -> list[ServiceStatus]:
    """Prometheus, Alertmanager, the exporters and the backup scheduler on `host`."""
    servers = [(p.name, {"http": p.port}) for p in monitoring.programs(settings, layout, host)]
    return _answering(host, programs, "monitoring", servers)


def _answering(
    host: HostSpec,
    programs: dict[str, ProgramStatus] | None,
    role: str,
    servers: list[tuple[str, dict[str, int]]],
) -> list[ServiceStatus]:
    """Each (program, ports) of `host`: healthy when running and answering on its HTTP port."""
    found = []
    for name, ports in servers:
        state, pid = _program(programs, name)
        up = state in ("RUNNING", REMOTE) and seaweedfs.answers(host.address, ports["http"])
        detail = "answering" if up else f"not answering on port {ports['http']}"
        found.append(
            ServiceStatus(name, role, state, up, pid, ports, detail=detail, host=host.name)
        )
    return found


def _program(programs: dict[str, ProgramStatus] | None, name: str) -> tuple[str, int | None]:
    if programs is None:
        return REMOTE, None
    p = programs.get(name)
    return (p.state, p.pid) if p else ("STOPPED", None)


def _etcd(
    settings: Settings, host: HostSpec, programs: dict[str, ProgramStatus] | None
) -> ServiceStatus:
    state, pid = _program(programs, ETCD_PROGRAM)
    asked = state in ("RUNNING", REMOTE)
    url = settings.etcd_client_url(host)
    ok = etcd_member_healthy(url, client_context(settings)) if asked else False
    if ok:
        detail = ""
    elif not asked:
        detail = "not running"
    else:
        detail = "no quorum, or not reachable" if state == REMOTE else "etcd not healthy"
    return ServiceStatus(
        ETCD_PROGRAM,
        "dcs",
        state,
        ok,
        pid,
        {"client": settings.etcd.client_port, "peer": settings.etcd.peer_port},
        detail=detail,
        host=host.name,
    )


def _node(
    settings: Settings,
    layout: StateLayout,
    host: HostSpec,
    node: NodeSpec,
    member: MemberStatus | None,
    programs: dict[str, ProgramStatus] | None,
) -> ServiceStatus:
    state, pid = _program(programs, node.name)
    ports = {"postgres": node.port, "api": node.api_port}
    pm_pid = postmaster_pid(layout.node_data(node.name)) if programs is not None else None
    if member is None:
        return ServiceStatus(
            node.name,
            "down",
            state,
            False,
            pid,
            ports,
            postgres_pid=pm_pid,
            detail="Patroni not running"
            + (f"; its postgres is still up (pid {pm_pid})" if pm_pid else ""),
            host=host.name,
        )
    if not member.reachable:
        detail = "Patroni not reachable" + (f" on {host.name}" if state == REMOTE else "")
    elif member.state != "running":
        detail = f"postgres {member.state}"
    elif member.role is Role.REPLICA:
        detail = f"replication {member.replication_state or 'not streaming'}"
    else:
        detail = f"timeline {member.timeline}"
    if member.failsafe_active:
        detail += (
            "; FAILSAFE ACTIVE: etcd has no quorum, the primary keeps serving while every "
            "member answers it (no failover is possible until etcd is back)"
        )
    return ServiceStatus(
        node.name,
        member.role.value if member.reachable else "down",
        state,
        member.healthy,
        pid,
        ports,
        postgres_pid=pm_pid,
        detail=detail,
        host=host.name,
    )


def _haproxy(
    settings: Settings, host: HostSpec, programs: dict[str, ProgramStatus] | None
) -> ServiceStatus:
    state, pid = _program(programs, HAPROXY_PROGRAM)
    servers: list[ServerStatus] = []
    ok = False
    if state in ("RUNNING", REMOTE):
        try:
            servers = fetch_server_status(settings, address=host.address)
            ok = True
        except NotRunningError:
            ok = False
    h = settings.haproxy
    ports = {"write": h.write_port, "read": h.read_port, "stats": h.stats_port}
    if host.apps:
        ports["web"] = settings.apps.web_port
    return ServiceStatus(
        HAPROXY_PROGRAM,
        "proxy",
        state,
        ok,
        pid,
        ports,
        detail=_backend_summary(servers) if ok else "stats page not reachable",
        host=host.name,
    )


def _apps(
    settings: Settings, layout: StateLayout, host: HostSpec, local: bool
) -> list[ServiceStatus]:
    found = []
    if local:
        for app in app_states(settings, layout):
            # Stopped applications count against health only where 'start video' starts them.
            judged = settings.apps.autostart or app.state != "STOPPED"
            found.append(
                ServiceStatus(
                    app.name,
                    "app",
                    app.state,
                    app.ready or not judged,
                    app.pid,
                    {"http": app.port},
                    detail=app.detail,
                    host=host.name,
                )
            )
        return found
    for name, port in settings.apps.service_ports().items():
        ready, detail = readiness(host.address, port)
        found.append(
            ServiceStatus(
                name,
                "app",
                REMOTE,
                ready,
                None,
                {"http": port},
                detail=detail,
                host=host.name,
            )
        )
    return found


def _backend_summary(servers: list[ServerStatus]) -> str:
    parts = []
    for backend in ("postgres_write", "postgres_read"):
        up = [s.server for s in servers if s.backend == backend and s.up]
        parts.append(f"{backend.split('_')[1]}: {', '.join(up) or 'NONE UP'}")
    return "; ".join(parts)
