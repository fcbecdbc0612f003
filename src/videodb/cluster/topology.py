"""Scaling (the guide's "add more read replicas"): add and remove replicas on a running cluster.

Replicas added here are kept in the state directory (nodes.json) beside the nodes of the config
file, so `stop` / `start` bring them back.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass

from videodb.cluster.haproxy_admin import haproxy_command, reload_haproxy, set_server_state
from videodb.cluster.haproxy_stats import fetch_server_status
from videodb.cluster.lifecycle import is_running
from videodb.cluster.patroni_api import PatroniAPI, Role
from videodb.cluster.postmaster import pg_ctl_stop, postmaster_pid
from videodb.cluster.preflight import find_toolchain, port_problems
from videodb.cluster.render import READ_BACKEND, WRITE_BACKEND, Toolchain
from videodb.cluster.state import prepare_state, validate_haproxy
from videodb.cluster.supervisor import Supervisor
from videodb.config import NODE_NAME_PATTERN, NodeSpec, Settings
from videodb.errors import ClusterError, ConfigError, NotRunningError, PrerequisiteError
from videodb.layout import StateLayout, service_user
from videodb.ports import port_is_free
from videodb.waiting import wait_for

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


def _nodes_file(layout: StateLayout) -> str:
    return str(layout.root / "nodes.json")


def extra_nodes(layout: StateLayout) -> list[NodeSpec]:
    path = layout.root / "nodes.json"
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
        return [NodeSpec.model_validate(item) for item in data]
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not a valid list of nodes ({exc}); fix or remove it") from exc


def _save_extra(layout: StateLayout, nodes: list[NodeSpec]) -> None:
    """Write nodes.json whole or not at all (a temporary file, fsynced, renamed over it)."""
    path = layout.root / "nodes.json"
    tmp = path.with_suffix(".json.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(json.dumps([n.model_dump() for n in nodes], indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


NODE_NAME = re.compile(NODE_NAME_PATTERN)


def with_nodes(settings: Settings, nodes: list[NodeSpec]) -> Settings:
    """The same settings with another node list, validated again (ports must stay distinct)."""
    data = settings.model_dump()
    data["database"]["app_password"] = settings.database.app_password
    data["nodes"] = [n.model_dump() for n in nodes]
    return Settings.model_validate(data)


def with_extra_nodes(settings: Settings, layout: StateLayout) -> Settings:
    """The configured nodes plus the replicas added with add-replica."""
    extra = extra_nodes(layout)
    if not extra:
        return settings
    try:
        return with_nodes(settings, [*settings.nodes, *extra])
    except ValueError as exc:
        raise ConfigError(
            f"replicas in {_nodes_file(layout)} clash with the config: {exc}"
        ) from exc


def _next_port(used: set[int], start: int, host: str) -> int:
    port = start
    while port in used or not port_is_free(host, port):
        port += 1
        if port > 65535:
            raise PrerequisiteError("no free port left above the existing nodes' ports")
    return port


def _tools(settings: Settings) -> Toolchain:
    tools, problems = find_toolchain(settings)
    if tools is None:
        raise PrerequisiteError("cannot change the cluster:\n  " + "\n  ".join(problems))
    return tools


def _reload_haproxy(settings: Settings, layout: StateLayout, tools: Toolchain) -> None:
    validate_haproxy(tools, layout)
    reload_haproxy(layout)


def _server_in_read_backend(settings: Settings, name: str, up: bool | None) -> bool:
    try:
        servers = fetch_server_status(settings)
    except NotRunningError:
        return False
    for s in servers:
        if s.backend == READ_BACKEND and s.server == name:
            return up is None or s.up == up
    return False


@dataclass
class ReplicaChange:
    name: str
    port: int
    api_port: int
    elapsed_s: float


def add_replica(
    settings: Settings,
    layout: StateLayout,
    name: str | None = None,
    port: int | None = None,
    api_port: int | None = None,
    timeout: float = 180.0,
    progress: Progress = lambda _: None,
) -> tuple[Settings, ReplicaChange]:
    """Clone a new replica from the primary, wait until it streams, add it to the read port."""
    if not is_running(layout):
        raise NotRunningError("the platform is not running; 'platform.sh start video' first")
    began = time.monotonic()
    existing = {n.name for n in settings.nodes}
    if name is None:
        i = 1
        while f"postgres-video-replica-{i}" in existing:
            i += 1
        name = f"postgres-video-replica-{i}"
    if name in existing:
        raise ConfigError(f"a node named {name!r} exists already")
    if not NODE_NAME.fullmatch(name):
        raise ConfigError(
            f"node name {name!r} is not allowed: lower-case letters, digits and '-', starting "
            "with a letter, at most 63 characters (e.g. postgres-video-replica-3)"
        )
    host = settings.address
    used = set(settings.all_ports().values())
    port = port or _next_port(used, max(n.port for n in settings.nodes) + 1, host)
    used.add(port)
    api_port = api_port or _next_port(used, max(n.api_port for n in settings.nodes) + 1, host)
    node = NodeSpec(name=name, port=port, api_port=api_port)
    extra = [*extra_nodes(layout), node]
    try:
        new_settings = with_nodes(settings, [*settings.nodes, node])
    except ValueError as exc:
        raise ConfigError(f"cannot add {name}: {exc}") from exc
    busy = [p for p in port_problems(new_settings) if f"({name} " in p]
    if busy:
        raise PrerequisiteError("cannot add the replica:\n  " + "\n  ".join(busy))
    tools = _tools(new_settings)
    progress(f"adding {name} (postgres {port}, api {api_port})")
    prepare_state(new_settings, layout, service_user(), tools)
    supervisor = Supervisor(layout)
    try:
        supervisor.apply_config()
        progress(f"{name} is cloning from the primary")
        api = PatroniAPI(new_settings)

        def streaming() -> bool:
            m = api.member(node)
            return m.role is Role.REPLICA and m.replication_state == "streaming"

        wait_for(
            streaming,
            timeout=timeout,
            what=f"{name} streaming",
            hint=f"see 'platform.sh logs {name}'",
        )
    except BaseException as exc:
        progress(f"{name} did not stream: removing it again (its log stays in {layout.logs})")
        try:
            _undo_add(settings, layout, tools, node)
        except Exception as undo:  # keep why it failed; say what is left to clean up
            log.error("could not remove the half-added %s: %s", name, undo)
            exc.add_note(
                f"removing the half-added {name} failed too ({undo}); 'platform.sh restart' "
                f"drops it, and its data is in {layout.node_data(name)}"
            )
        raise
    # Only a replica that streams is recorded: nodes.json never names a half-added node.
    _save_extra(layout, extra)
    progress("reloading HAProxy with the new server (existing connections stay)")
    _reload_haproxy(new_settings, layout, tools)
    wait_for(
        lambda: _server_in_read_backend(new_settings, name, True),
        timeout=30,
        what=f"{name} UP in HAProxy's read backend",
        hint="see 'platform.sh haproxy-stats'",
    )
    log.info("added replica %s (postgres %d, api %d)", name, port, api_port)
    return new_settings, ReplicaChange(name, port, api_port, time.monotonic() - began)


def _undo_add(settings: Settings, layout: StateLayout, tools: Toolchain, node: NodeSpec) -> None:
    """Put the generated files and supervisord back as they were before add-replica."""
    prepare_state(settings, layout, service_user(), tools)
    layout.patroni_config(node.name).unlink(missing_ok=True)
    Supervisor(layout).apply_config()  # stops its Patroni, which stops its postgres
    data = layout.node_data(node.name)
    if postmaster_pid(data) is not None:
        pg_ctl_stop(settings, data)
    shutil.rmtree(data, ignore_errors=True)


def remove_replica(
    settings: Settings,
    layout: StateLayout,
    name: str,
    drain_timeout: float = 30.0,
    progress: Progress = lambda _: None,
) -> tuple[Settings, ReplicaChange]:
    """Take a replica out of HAProxy (drain its sessions), then stop it and delete its data."""
    if not is_running(layout):
        raise NotRunningError("the platform is not running; 'platform.sh start video' first")
    began = time.monotonic()
    extra = extra_nodes(layout)
    node = next((n for n in extra if n.name == name), None)
    if node is None:
        settings.node(name)  # unknown name: lists the nodes
        raise ConfigError(
            f"{name} comes from the config file, not from add-replica; remove it there and restart"
        )
    member = PatroniAPI(settings).member(node)
    if member.role is Role.PRIMARY:
        raise ClusterError(f"{name} is the primary; 'platform.sh switchover' to another node first")
    progress(f"draining {name} in HAProxy (no new connections)")
    set_server_state(layout, WRITE_BACKEND, name, "maint")
    set_server_state(layout, READ_BACKEND, name, "drain")

    def drained() -> bool:
        servers = fetch_server_status(settings)
        return all(s.current_sessions == 0 for s in servers if s.server == name)

    try:
        wait_for(drained, timeout=drain_timeout, what=f"{name}'s sessions finishing")
    except ClusterError:
        progress(f"{name} still has sessions after {drain_timeout:g} s; closing them")
        haproxy_command(layout, f"shutdown sessions server {READ_BACKEND}/{name}")
    set_server_state(layout, READ_BACKEND, name, "maint")
    progress(f"stopping {name}")
    remaining = [n for n in extra if n.name != name]
    _save_extra(layout, remaining)
    new_settings = with_nodes(settings, [n for n in settings.nodes if n.name != name])
    tools = _tools(new_settings)
    prepare_state(new_settings, layout, service_user(), tools)
    (layout.patroni_config(name)).unlink(missing_ok=True)
    Supervisor(layout).apply_config()  # stops its Patroni, which stops its postgres
    if postmaster_pid(layout.node_data(name)) is not None:
        pg_ctl_stop(settings, layout.node_data(name))
    _reload_haproxy(new_settings, layout, tools)
    shutil.rmtree(layout.node_data(name), ignore_errors=True)
    log.info("removed replica %s", name)
    return new_settings, ReplicaChange(name, node.port, node.api_port, time.monotonic() - began)
