"""`status`: every process of the platform with its role, pid, port and health."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from videodb.cluster.apps import app_states
from videodb.cluster.haproxy_stats import ServerStatus, fetch_server_status
from videodb.cluster.health import etcd_healthy
from videodb.cluster.patroni_api import PatroniAPI, Role
from videodb.cluster.postmaster import postmaster_pid
from videodb.cluster.render import ETCD_PROGRAM, HAPROXY_PROGRAM
from videodb.cluster.supervisor import ProgramStatus, Supervisor, supervisord_pid
from videodb.config import Settings
from videodb.errors import NotRunningError
from videodb.layout import StateLayout


@dataclass
class ServiceStatus:
    name: str
    role: str  # primary, replica, dcs, proxy
    state: str  # supervisord's state, or 'stopped'
    healthy: bool
    pid: int | None
    ports: dict[str, int]
    postgres_pid: int | None = None
    detail: str = ""


@dataclass
class PlatformStatus:
    running: bool
    state_dir: str
    supervisor_pid: int | None
    services: list[ServiceStatus] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return self.running and all(s.healthy for s in self.services)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "started": True, "healthy": self.healthy}


def never_started(layout: StateLayout) -> bool:
    """No platform was ever started in this state directory (no generated supervisord.conf)."""
    return not layout.supervisor_config().exists()


def platform_status(settings: Settings, layout: StateLayout) -> PlatformStatus:
    """What this state directory started, and how it is doing.

    Only processes this state directory's supervisord runs are asked anything: a port that
    another cluster (or anything else) holds while ours is stopped is never probed.
    """
    sup_pid = supervisord_pid(layout)
    programs: dict[str, ProgramStatus] = {}
    if sup_pid is not None:
        try:
            programs = {p.name: p for p in Supervisor(layout).programs()}
        except NotRunningError:
            programs = {}
    status = PlatformStatus(sup_pid is not None, str(layout.root), sup_pid)

    def prog(name: str) -> tuple[str, int | None]:
        p = programs.get(name)
        return (p.state, p.pid) if p else ("STOPPED", None)

    state, pid = prog(ETCD_PROGRAM)
    etcd_ok = etcd_healthy(settings) if state == "RUNNING" else False
    running = {name for name, p in programs.items() if p.state == "RUNNING"}
    status.services.append(
        ServiceStatus(
            ETCD_PROGRAM,
            "dcs",
            state,
            etcd_ok,
            pid,
            {"client": settings.etcd.client_port, "peer": settings.etcd.peer_port},
            detail="" if etcd_ok else ("etcd not healthy" if state == "RUNNING" else "not running"),
        )
    )
    api = PatroniAPI(settings)
    for node in settings.nodes:
        state, pid = prog(node.name)
        pm_pid = postmaster_pid(layout.node_data(node.name))
        if node.name not in running:
            status.services.append(
                ServiceStatus(
                    node.name,
                    "down",
                    state,
                    False,
                    pid,
                    {"postgres": node.port, "api": node.api_port},
                    postgres_pid=pm_pid,
                    detail="Patroni not running"
                    + (f"; its postgres is still up (pid {pm_pid})" if pm_pid else ""),
                )
            )
            continue
        member = api.member(node)
        healthy = member.healthy
        if not member.reachable:
            detail = "Patroni not reachable"
        elif member.state != "running":
            detail = f"postgres {member.state}"
        elif member.role is Role.REPLICA:
            detail = f"replication {member.replication_state or 'not streaming'}"
        else:
            detail = f"timeline {member.timeline}"
        status.services.append(
            ServiceStatus(
                node.name,
                member.role.value if member.reachable else "down",
                state,
                healthy,
                pid,
                {"postgres": node.port, "api": node.api_port},
                postgres_pid=pm_pid,
                detail=detail,
            )
        )
    state, pid = prog(HAPROXY_PROGRAM)
    servers: list[ServerStatus] = []
    haproxy_ok = False
    if state == "RUNNING":
        try:
            servers = fetch_server_status(settings)
            haproxy_ok = True
        except NotRunningError:
            haproxy_ok = False
    h = settings.haproxy
    status.services.append(
        ServiceStatus(
            HAPROXY_PROGRAM,
            "proxy",
            state,
            haproxy_ok,
            pid,
            {
                "write": h.write_port,
                "read": h.read_port,
                "stats": h.stats_port,
                "web": settings.apps.web_port,
            },
            detail=_backend_summary(servers) if haproxy_ok else "stats page not reachable",
        )
    )
    for app in app_states(settings, layout):
        # Stopped applications count against health only where 'start video' starts them.
        judged = settings.apps.autostart or app.state != "STOPPED"
        status.services.append(
            ServiceStatus(
                app.name,
                "app",
                app.state,
                app.ready or not judged,
                app.pid,
                {"http": app.port},
                detail=app.detail,
            )
        )
    return status


def _backend_summary(servers: list[ServerStatus]) -> str:
    parts = []
    for backend in ("postgres_write", "postgres_read"):
        up = [s.server for s in servers if s.backend == backend and s.up]
        parts.append(f"{backend.split('_')[1]}: {', '.join(up) or 'NONE UP'}")
    return "; ".join(parts)
