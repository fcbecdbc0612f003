"""A cluster across hosts while it runs: a host joining, and a changed cluster file re-applied.

Adding a host, in order (docs/operator-guide.md, "Adding a host"):
1. the cluster file, with the new host and its node, is copied to every host;
2. `start video` again on every running host: each re-renders its configuration and applies what
   changed without a restart (Patroni reloads its pg_hba and etcd hosts; HAProxy reloads with the
   new server, keeping its connections);
3. `add-host NAME` on any running host: the new etcd member is registered as a learner;
4. `start video` on the new host: its etcd joins the running cluster and is promoted to a voting
   member once in sync; its PostgreSQL node clones from the primary and streams.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from videodb.cluster import etcd_members, monitoring
from videodb.cluster.haproxy_admin import reload_haproxy
from videodb.cluster.patroni_api import PatroniAPI
from videodb.cluster.render import Toolchain
from videodb.cluster.state import prepare_state, validate_haproxy
from videodb.cluster.supervisor import Supervisor
from videodb.config import Settings
from videodb.errors import ClusterError, ConfigError
from videodb.layout import ServiceUser, StateLayout
from videodb.waiting import wait_for

log = logging.getLogger(__name__)
Progress = Callable[[str], None]


@dataclass(frozen=True)
class EtcdJoin:
    """This host's etcd member joins a running cluster (it was added as a learner)."""

    initial_cluster: str
    member: etcd_members.EtcdMember
    via: etcd_members.Endpoint  # a member that has a quorum


def etcd_join(settings: Settings, layout: StateLayout) -> EtcdJoin | None:
    """How this host's etcd starts: None to bootstrap with the others (a new cluster, or data of
    its own already), or the running cluster to join when `add-host` registered it."""
    this = settings.this_host()
    if not this.etcd or len(settings.etcd_hosts()) < 2 or (layout.etcd_data() / "member").exists():
        return None
    try:
        url = etcd_members.healthy_member(settings, exclude=this.name)
    except ClusterError:
        return None  # no quorum elsewhere yet: the cluster is being created, all members new
    listed = etcd_members.members(url)
    mine = etcd_members.member_for(settings, this, listed)
    if mine is None:
        raise ClusterError(
            f"etcd is running on the other hosts without {this.name}; register this host first "
            f"with 'platform.sh --cluster FILE add-host {this.name}' on a running host (see "
            "docs/operator-guide.md, 'Adding a host')"
        )
    return EtcdJoin(etcd_members.initial_cluster(settings, this, listed), mine, url)


def promote_when_in_sync(join: EtcdJoin, timeout: float, progress: Progress) -> None:
    if not join.member.learner:
        return
    progress("etcd joined as a learner; promoting it to a voting member once in sync")
    wait_for(
        lambda: etcd_members.promote(join.via, join.member),
        timeout=timeout,
        what="the new etcd member promoted (in sync with the leader)",
        interval=0.5,
        hint="see 'platform.sh logs etcd'",
    )


def _snapshot(paths: list[Path]) -> dict[Path, str | None]:
    return {p: p.read_text(encoding="utf-8") if p.exists() else None for p in paths}


def _patroni_local(text: str | None) -> Any:
    """What a Patroni reload applies: the file without `bootstrap` (read once, at bootstrap;
    the dynamic settings in it are applied through the REST API instead)."""
    if text is None:
        return None
    doc = yaml.safe_load(text)
    if isinstance(doc, dict):
        doc.pop("bootstrap", None)
    return doc


def reapply(
    settings: Settings,
    layout: StateLayout,
    user: ServiceUser,
    tools: Toolchain,
    api_password: str,
) -> list[str]:
    """Re-render this host's configuration on a running host and apply what changed without a
    restart: Patroni reloads (pg_hba, etcd hosts, parameters), HAProxy reloads gracefully."""
    local = settings.local_nodes()
    patroni_files = {n.name: layout.patroni_config(n.name) for n in local}
    watched = monitoring.watched_files(settings, layout)
    monitor_files = [p for files in watched.values() for p in files]
    before = _snapshot([*patroni_files.values(), layout.haproxy_config(), *monitor_files])
    prepare_state(settings, layout, user, tools)
    after = _snapshot(list(before))
    changes: list[str] = []
    api = PatroniAPI(settings, api_password)
    for node in local:
        path = patroni_files[node.name]
        if _patroni_local(before[path]) != _patroni_local(after[path]):
            api.send("POST", node, "/reload", {}, timeout=10)
            changes.append(f"{node.name}: Patroni reloaded its configuration")
    if (
        settings.this_host().haproxy
        and before[layout.haproxy_config()] != after[layout.haproxy_config()]
    ):
        validate_haproxy(tools, layout)
        reload_haproxy(layout)
        changes.append("HAProxy reloaded with the new servers (its connections stay open)")
    touched = [n for n, files in watched.items() if any(before[p] != after[p] for p in files)]
    if touched:
        changes += monitoring.apply_changes(layout, touched, Supervisor(layout))
    return changes


@dataclass
class AddHostResult:
    host: str
    etcd_member: str | None
    next_steps: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0


def add_host(settings: Settings, name: str, cluster_file: Path | None) -> AddHostResult:
    """Register host `name` of the cluster file with the running cluster (its etcd member as a
    learner); the host then starts its own part."""
    began = time.monotonic()
    host = settings.host_spec(name)
    if not settings.multi_host or cluster_file is None:
        raise ConfigError("add-host works on a cluster file: pass --cluster FILE")
    member = etcd_members.add_learner(settings, host) if host.etcd else None
    file = str(cluster_file)
    others = [h.name for h in settings.topology_hosts() if h.name != name]
    steps = [
        f"on each of {', '.join(others)} (if not done yet): "
        f"platform.sh --cluster {file} --host HOST start video",
        f"on {name}: platform.sh --cluster {file} --host {name} start video",
    ]
    return AddHostResult(name, member.id if member else None, steps, time.monotonic() - began)


@dataclass
class RemoveHostResult:
    host: str
    etcd_member_removed: str | None
    next_steps: list[str] = field(default_factory=list)


def remove_host(settings: Settings, name: str, cluster_file: Path | None) -> RemoveHostResult:
    """Take a stopped host out of the running cluster: its etcd member is removed; then the
    cluster file without it, re-applied on every host, makes HAProxy and pg_hba forget it."""
    host = settings.host_spec(name)
    if not settings.multi_host or cluster_file is None:
        raise ConfigError("remove-host works on a cluster file: pass --cluster FILE")
    if name == settings.this_host().name:
        raise ConfigError(f"run remove-host on another host than {name} (it must be stopped)")
    api = PatroniAPI(settings)
    running = [
        m.name
        for m in api.members()
        if m.reachable and m.name in {n.name for n in settings.nodes_on(host)}
    ]
    if running:
        raise ClusterError(
            f"{name} still runs {', '.join(running)}; stop its part first "
            f"('platform.sh --cluster {cluster_file} --host {name} stop'; if it runs the master, "
            "'switchover' first)"
        )
    removed = None
    if host.etcd:
        url = etcd_members.healthy_member(settings, exclude=name)
        member = etcd_members.member_for(settings, host, etcd_members.members(url))
        if member is not None:
            etcd_members.remove(url, member)
            removed = member.id
    steps = [
        f"remove {name} and its nodes from {cluster_file} and copy it to every host",
        f"on each remaining host: platform.sh --cluster {cluster_file} --host HOST start video",
    ]
    return RemoveHostResult(name, removed, steps)
