"""Is the cluster healthy? One snapshot of etcd, Patroni and HAProxy, with the reasons if not."""

from __future__ import annotations

import json
import ssl
import urllib.request
from dataclasses import dataclass, field

from videodb.cluster.haproxy_stats import ServerStatus, fetch_server_status
from videodb.cluster.patroni_api import MemberStatus, PatroniAPI, Role
from videodb.cluster.render import READ_BACKEND, WRITE_BACKEND
from videodb.cluster.tls import client_context
from videodb.config import Settings
from videodb.errors import NotRunningError


def etcd_member_healthy(url: str, context: ssl.SSLContext, timeout: float = 1.0) -> bool:
    """One member's /health: true only while the cluster has a quorum and a leader."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout, context=context) as resp:
            return bool(json.loads(resp.read()).get("health") == "true")
    except (OSError, ValueError):
        return False


def etcd_healthy(settings: Settings, timeout: float = 1.0) -> bool:
    """etcd has a quorum, as seen from this host: this host's member if it runs one, else any."""
    this = settings.this_host()
    urls = settings.etcd_client_urls()
    if this.etcd:
        urls = [settings.etcd_client_url(this)]
    context = client_context(settings)
    return any(etcd_member_healthy(url, context, timeout) for url in urls)


@dataclass
class HealthReport:
    etcd: bool
    members: list[MemberStatus]
    servers: list[ServerStatus]
    problems: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems

    @property
    def primary(self) -> str | None:
        primaries = [m.name for m in self.members if m.role is Role.PRIMARY and m.healthy]
        return primaries[0] if len(primaries) == 1 else None


def sync_standby_chosen(settings: Settings) -> bool:
    """Patroni has named a synchronous standby (its /sync endpoint answers 200 on one node)."""
    api = PatroniAPI(settings)
    for node in settings.nodes:
        try:
            status, _ = api.get(node, "/sync")
        except OSError:
            continue
        if status == 200:
            return True
    return False


def check_health(
    settings: Settings,
    *,
    check_haproxy: bool = True,
    require_sync: bool = True,
    only_nodes: frozenset[str] | None = None,
) -> HealthReport:
    """Healthy: etcd up, one running primary, every replica streaming, HAProxy routing right,
    and, in a synchronous mode, a synchronous standby named (without one Patroni will not fail
    over, so as not to lose acknowledged writes).

    `only_nodes` limits the replica checks to those nodes (a host starting its own part).
    """
    api = PatroniAPI(settings)
    etcd = etcd_healthy(settings)
    members = api.members()
    problems: list[str] = []
    if not etcd:
        problems.append("etcd is not healthy")
    primaries = [m for m in members if m.role is Role.PRIMARY and m.state == "running"]
    if len(primaries) != 1:
        names = [m.name for m in primaries]
        problems.append(f"expected exactly one running primary, found {len(primaries)} {names}")
    for member in members:
        if member.role is Role.PRIMARY or (
            only_nodes is not None and member.name not in only_nodes
        ):
            continue
        if not member.reachable:
            problems.append(f"{member.name}: Patroni not reachable")
        elif member.state != "running":
            problems.append(f"{member.name}: postgres {member.state}")
        elif member.replication_state != "streaming":
            problems.append(f"{member.name}: replica not streaming ({member.replication_state})")
    if (
        require_sync
        and settings.patroni.replication != "async"
        and len(settings.nodes) > 1
        and not sync_standby_chosen(settings)
    ):
        if settings.patroni.replication == "sync":
            # After a failover, until the old master streams again (failover-test: unprotected_s)
            problems.append(
                "no synchronous standby named: commits are acknowledged with no replica holding "
                "them (unprotected), and a master lost now is not replaced automatically (Patroni "
                "promotes only a named synchronous standby) until one streams; replication "
                "'sync-strict' makes commits wait instead"
            )
        else:
            problems.append("no synchronous standby named: commits wait until a replica streams")
    servers: list[ServerStatus] = []
    if check_haproxy:
        try:
            servers = fetch_server_status(settings)
        except NotRunningError:
            problems.append("HAProxy stats not reachable")
        else:
            problems += _haproxy_problems(members, servers)
    return HealthReport(etcd=etcd, members=members, servers=servers, problems=problems)


def _haproxy_problems(members: list[MemberStatus], servers: list[ServerStatus]) -> list[str]:
    problems = []
    state = {(s.backend, s.server): s.up for s in servers}
    for member in members:
        want_write = member.role is Role.PRIMARY and member.healthy
        if state.get((WRITE_BACKEND, member.name)) != want_write:
            problems.append(
                f"HAProxy write backend has {member.name} "
                f"{'DOWN' if want_write else 'UP'}, expected {'UP' if want_write else 'DOWN'}"
            )
        if member.healthy and not state.get((READ_BACKEND, member.name)):
            problems.append(f"HAProxy read backend has {member.name} DOWN, expected UP")
    return problems
