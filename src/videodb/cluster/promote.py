"""`promote-slave`: the guide's emergency promotion, carried out by Patroni."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from videodb.cluster.haproxy_stats import fetch_server_status
from videodb.cluster.patroni_api import PatroniAPI, Role
from videodb.cluster.render import WRITE_BACKEND
from videodb.config import Settings
from videodb.errors import ClusterError, NotRunningError
from videodb.secrets import ClusterSecrets
from videodb.waiting import wait_for

log = logging.getLogger(__name__)


@dataclass
class PromoteResult:
    old_primary: str | None
    new_primary: str
    elapsed_s: float


def choose_candidate(settings: Settings, requested: str | None) -> str:
    """The replica to promote: the one asked for, else a streaming replica ('slave' first)."""
    api = PatroniAPI(settings)
    members = api.members()
    if requested is not None:
        settings.node(requested)  # raises with the known names
        member = next(m for m in members if m.name == requested)
        if member.role is Role.PRIMARY:
            raise ClusterError(f"{requested} is already the primary; nothing to promote")
        if not member.reachable or member.state != "running":
            raise ClusterError(
                f"{requested} cannot be promoted: its postgres is {member.state}; "
                f"see 'platform.sh logs {requested}'"
            )
        return requested
    replicas = [m for m in members if m.role is Role.REPLICA and m.state == "running"]
    if not replicas:
        raise ClusterError(
            "no running replica to promote; see 'platform.sh status' and "
            "'platform.sh replication-status'"
        )
    replicas.sort(key=lambda m: ("slave" not in m.name, m.replication_state != "streaming"))
    return replicas[0].name


def promote(
    settings: Settings,
    secrets: ClusterSecrets,
    candidate: str | None = None,
    timeout: float = 60.0,
) -> PromoteResult:
    """Make `candidate` the primary; the old primary is demoted and rejoins as a replica.

    Returns once the new primary accepts writes and HAProxy's write port points at it.
    """
    began = time.monotonic()
    api = PatroniAPI(settings, secrets.api_password)
    target = choose_candidate(settings, candidate)
    old = api.leader()
    api.post(settings.node(target), "/failover", {"candidate": target}, timeout=timeout)

    wait_routed(settings, target, timeout)
    log.warning("promoted %s to primary (was %s)", target, old.name if old else "none")
    return PromoteResult(old.name if old else None, target, time.monotonic() - began)


def wait_routed(settings: Settings, target: str, timeout: float) -> None:
    """Until `target` is the running primary and the only UP server behind the write port."""
    api = PatroniAPI(settings)

    def routed() -> bool:
        leader = api.leader()
        if leader is None or leader.name != target:
            return False
        try:
            servers = fetch_server_status(settings)
        except NotRunningError:
            return False
        up = [s.server for s in servers if s.backend == WRITE_BACKEND and s.up]
        return up == [target]

    wait_for(
        routed,
        timeout=timeout,
        what=f"{target} as the primary behind the write port",
        hint=f"see 'platform.sh logs {target}' and 'platform.sh haproxy-stats'",
        interval=0.05,
    )
