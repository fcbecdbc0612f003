"""patronictl's everyday verbs through Patroni's REST API: the members in one table, the
failover history, the dynamic configuration (shown, edited with validation), and rolling restarts
and reloads of the nodes.

Everything goes through the REST API (patronictl costs 0.4 s a call and would need its own
configuration); what changes state needs the API password and this host's client certificate.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from videodb.cluster.patroni_api import PatroniAPI, Role
from videodb.cluster.pg import connect_superuser
from videodb.cluster.render import local_parameters
from videodb.config import NodeSpec, Settings
from videodb.errors import ClusterError, ConfigError
from videodb.layout import StateLayout
from videodb.secrets import ClusterSecrets
from videodb.waiting import wait_for

Progress = Callable[[str], None]

# What `edit-config` may change: Patroni's dynamic settings (postgresql.parameters.* apart).
DYNAMIC_KEYS: dict[str, type] = {
    "ttl": int,
    "loop_wait": int,
    "retry_timeout": int,
    "maximum_lag_on_failover": int,
    "primary_start_timeout": int,
    "primary_stop_timeout": int,
    "synchronous_mode": bool,
    "synchronous_mode_strict": bool,
    "failsafe_mode": bool,
    "check_timeline": bool,
    "max_timelines_history": int,
    "postgresql.use_pg_rewind": bool,
}


BOOLEANS = ("on", "off", "true", "false", "yes", "no", "1", "0")


def _quiet(_: str) -> None:
    return None


@dataclass(frozen=True)
class Member:
    """One row of `list`: a node as the cluster (Patroni's /cluster) sees it."""

    name: str
    host: str
    role: str  # leader, sync_standby, replica...
    state: str  # running, streaming, stopped...
    timeline: int | None
    lag_bytes: int | None  # replicas: behind the leader's last position in etcd
    pending_restart: bool


@dataclass(frozen=True)
class HistoryEntry:
    """One failover or switchover: the timeline it ended, where, when, and who took over."""

    timeline: int
    lsn: int
    reason: str
    at: str | None
    new_leader: str | None


@dataclass
class ConfigChange:
    applied: dict[str, Any]
    pending_restart: list[str] = field(default_factory=list)  # members that need a restart


def _any_cluster_doc(api: PatroniAPI, settings: Settings, path: str) -> Any:
    problems = []
    for node in settings.nodes:
        try:
            status, doc = api.get(node, path, timeout=3.0)
        except OSError as exc:
            problems.append(f"{node.name}: {exc}")
            continue
        if status == 200:
            return doc
        problems.append(f"{node.name}: HTTP {status}")
    raise ClusterError(
        f"no Patroni answered GET {path} ({'; '.join(problems)}); see 'platform.sh status'"
    )


def list_members(settings: Settings) -> list[Member]:
    doc = _any_cluster_doc(PatroniAPI(settings), settings, "/cluster")
    found = []
    for m in doc.get("members", []):
        lag = m.get("lag")
        found.append(
            Member(
                name=str(m.get("name")),
                host=str(m.get("host", "")),
                role=str(m.get("role", "?")),
                state=str(m.get("state", "?")),
                timeline=int(m["timeline"]) if m.get("timeline") is not None else None,
                lag_bytes=int(lag) if isinstance(lag, int) else None,
                pending_restart=bool(m.get("pending_restart")),
            )
        )
    return sorted(found, key=lambda m: m.name)


def history(settings: Settings) -> list[HistoryEntry]:
    rows = _any_cluster_doc(PatroniAPI(settings), settings, "/history") or []
    entries = []
    for row in rows:
        entries.append(
            HistoryEntry(
                timeline=int(row[0]),
                lsn=int(row[1]),
                reason=str(row[2]),
                at=str(row[3]) if len(row) > 3 and row[3] else None,
                new_leader=str(row[4]) if len(row) > 4 and row[4] else None,
            )
        )
    return entries


def show_config(settings: Settings) -> dict[str, Any]:
    config = PatroniAPI(settings).cluster_config()
    if config is None:
        raise ClusterError("no Patroni answered GET /config; see 'platform.sh status'")
    return config


def _parse(key: str, raw: str, kind: type) -> Any:
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in ("true", "on", "yes", "1"):
            return True
        if lowered in ("false", "off", "no", "0"):
            return False
        raise ConfigError(f"{key}={raw!r}: give true or false")
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{key}={raw!r}: give a whole number") from None


def plan_change(assignments: list[str]) -> dict[str, Any]:
    """KEY=VALUE pairs as a PATCH /config document; unknown keys and bad values refused.
    `postgresql.parameters.NAME=VALUE` (or `NAME=` to reset it) is checked by PostgreSQL."""
    patch: dict[str, Any] = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{item!r}: give KEY=VALUE, e.g. loop_wait=2")
        if key.startswith("postgresql.parameters."):
            name = key.removeprefix("postgresql.parameters.")
            params = patch.setdefault("postgresql", {}).setdefault("parameters", {})
            params[name] = raw if raw != "" else None
            continue
        if key not in DYNAMIC_KEYS:
            known = ", ".join(sorted(DYNAMIC_KEYS))
            raise ConfigError(
                f"{key!r} is not a dynamic setting edit-config changes; the keys are: {known}, "
                "and postgresql.parameters.NAME"
            )
        value = _parse(key, raw, DYNAMIC_KEYS[key])
        if key.startswith("postgresql."):
            patch.setdefault("postgresql", {})[key.removeprefix("postgresql.")] = value
        else:
            patch[key] = value
    if not patch:
        raise ConfigError("nothing to change: give KEY=VALUE pairs, e.g. loop_wait=2")
    return patch


def _within(raw: str, low: str | None, high: str | None) -> bool:
    """A unitless number within [low, high]; a value with a unit (16MB, 5s) is PostgreSQL's to
    judge when it applies it."""
    try:
        number = float(raw)
    except ValueError:
        return True
    return low is None or high is None or float(low) <= number <= float(high)


def check_parameters(
    settings: Settings, secrets: ClusterSecrets, parameters: dict[str, Any]
) -> dict[str, str]:
    """Every parameter exists and takes its value, asked of the primary (nothing changes there):
    a setting a session may set is tried in a rolled-back transaction; the others are checked
    by type (on/off, the enum's values, a unitless number within its range). Returns each
    parameter's context ('postmaster': it takes a restart)."""
    primary = PatroniAPI(settings).require_leader("to check the parameters against")
    contexts: dict[str, str] = {}
    with connect_superuser(settings, secrets, primary) as conn:
        for name, value in parameters.items():
            row = conn.execute(
                "SELECT context, vartype, min_val, max_val, enumvals FROM pg_settings "
                "WHERE name = %s",
                (name,),
            ).fetchone()
            if row is None:
                raise ConfigError(
                    f"postgresql.parameters.{name}: PostgreSQL has no such parameter "
                    "(SELECT name FROM pg_settings lists them)"
                )
            context, vartype, low, high, choices = (str(x) if x is not None else None for x in row)
            contexts[name] = str(context)
            if value is None:
                continue  # a reset to the default
            text = str(value)
            problem = None
            if context in ("user", "superuser"):
                try:
                    with conn.transaction(force_rollback=True):
                        conn.execute("SELECT set_config(%s, %s, true)", (name, text))
                except psycopg.Error as exc:
                    problem = str(exc).strip().splitlines()[0]
            elif vartype == "bool" and text.lower() not in BOOLEANS:
                problem = "give on or off"
            elif vartype == "enum" and choices and text not in choices.strip("{}").split(","):
                problem = f"one of {choices.strip('{}')}"
            elif vartype in ("integer", "real") and not _within(text, low, high):
                problem = f"between {low} and {high}"
            if problem:
                raise ConfigError(f"postgresql.parameters.{name}={text!r} refused: {problem}")
    return contexts


def edit_config(
    settings: Settings,
    layout: StateLayout,
    secrets: ClusterSecrets,
    assignments: list[str],
    *,
    timeout: float = 30.0,
    progress: Progress = _quiet,
) -> ConfigChange:
    """Validate, PATCH Patroni's dynamic configuration, and wait until every running member
    applied it: reloaded, or flagged 'pending restart' for settings that need one."""
    patch = plan_change(assignments)
    parameters = patch.get("postgresql", {}).get("parameters", {})
    held = sorted(set(parameters) & set(local_parameters(settings, layout, settings.nodes[0])))
    if held:
        raise ConfigError(
            f"{', '.join('postgresql.parameters.' + n for n in held)}: set in each node's own "
            "configuration, which overrides Patroni's dynamic one (config/platform.toml "
            "[postgresql.parameters], or fixed by the platform); change it in the config file "
            "and run 'platform.sh start video' on each host (then 'restart --pending' if it "
            "needs a restart)"
        )
    contexts = check_parameters(settings, secrets, parameters) if parameters else {}
    api = PatroniAPI(settings, secrets.api_password)
    progress(f"applying {', '.join(assignments)}")
    api.patch_config(patch)
    change = ConfigChange(applied=patch)
    restart_needed = [n for n, c in contexts.items() if c == "postmaster"]
    if restart_needed:
        progress(f"{', '.join(restart_needed)} take effect at a restart: waiting for the flag")

        def flagged() -> bool:
            members = [m for m in list_members(settings) if m.state in ("running", "streaming")]
            change.pending_restart = [m.name for m in members if m.pending_restart]
            return bool(members) and len(change.pending_restart) == len(members)

        wait_for(flagged, timeout=timeout, what="every member flagged 'pending restart'")
    return change


def wait_node_running(api: PatroniAPI, node: NodeSpec, after: float, timeout: float) -> None:
    """Patroni reports `node` running again, with a postmaster started after `after`."""

    def running() -> bool:
        status, doc = api.get(node, "/patroni")
        if status not in (200, 503) or not isinstance(doc, dict):
            return False
        started = doc.get("postmaster_start_time")
        if doc.get("state") != "running" or not started:
            return False
        return datetime.fromisoformat(str(started)).timestamp() >= after - 1

    wait_for(running, timeout=timeout, what=f"{node.name} running again", interval=0.3)


def roles(settings: Settings) -> dict[str, Role]:
    return {m.name: m.role for m in PatroniAPI(settings).members()}


def restart_order(settings: Settings, names: list[str]) -> list[NodeSpec]:
    """Replicas first, the primary last."""
    current = roles(settings)
    nodes = [settings.node(n) for n in names]
    return sorted(nodes, key=lambda n: current.get(n.name) is Role.PRIMARY)


def restart_nodes(
    settings: Settings,
    secrets: ClusterSecrets,
    names: list[str],
    *,
    pending_only: bool = False,
    switchover_first: bool = False,
    timeout: float = 120.0,
    progress: Progress = _quiet,
) -> list[str]:
    """Restart PostgreSQL on these nodes through Patroni, one at a time, replicas first, each
    running again before the next; with `switchover_first` the primary hands its role to a
    replica before its own restart. Returns the nodes restarted."""
    from videodb.cluster.ha import switchover

    api = PatroniAPI(settings, secrets.api_password)
    done = []
    for node in restart_order(settings, names):
        if pending_only:
            member = next((m for m in list_members(settings) if m.name == node.name), None)
            if member is None or not member.pending_restart:
                progress(f"{node.name}: no restart pending")
                continue
        if switchover_first and roles(settings).get(node.name) is Role.PRIMARY:
            progress(f"{node.name} is the master: switching over first")
            switched = switchover(settings, secrets, None, timeout=timeout)
            progress(f"{switched.new_primary} is the master now; waiting for {node.name} to follow")
            wait_for(
                functools.partial(_running_replica, api, node),
                timeout=timeout,
                what=f"{node.name} running as a replica after the switchover",
                interval=0.3,
            )
        progress(f"restarting {node.name}")
        began = time.time()
        _post_restart(api, node, timeout)
        wait_node_running(api, node, began, timeout)
        done.append(node.name)
    return done


def _running_replica(api: PatroniAPI, node: NodeSpec) -> bool:
    member = api.member(node)
    return member.role is Role.REPLICA and member.state == "running"


def _post_restart(api: PatroniAPI, node: NodeSpec, timeout: float) -> None:
    """POST /restart; Patroni answers 503 while another action (a demote, a restart) runs on
    the node: asked again until it takes it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            api.post(node, "/restart", {}, timeout=timeout)
            return
        except ClusterError as exc:
            if "HTTP 503" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


def reload_nodes(settings: Settings, api_password: str, names: list[str]) -> list[str]:
    api = PatroniAPI(settings, api_password)
    for name in names:
        api.post(settings.node(name), "/reload", {}, timeout=30)
    return names
