"""High availability controls: failover mode, maintenance, wait-sync, switchover, rejoin."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg

from videodb.cluster import render
from videodb.cluster.health import sync_standby_chosen
from videodb.cluster.patroni_api import PatroniAPI, Role
from videodb.cluster.pg import connect_superuser
from videodb.cluster.promote import choose_candidate, wait_routed
from videodb.config import TIMING_PROFILES, Settings
from videodb.errors import ClusterError, TimeoutExpired
from videodb.secrets import ClusterSecrets
from videodb.waiting import wait_for

log = logging.getLogger(__name__)


def apply_dynamic_config(settings: Settings, secrets: ClusterSecrets) -> dict[str, Any]:
    """Push failover mode, replication mode and timings from the config into etcd."""
    desired = render.dynamic_config(settings)
    PatroniAPI(settings, secrets.api_password).patch_config(desired)
    return desired


# The dynamic (etcd) keys each of start's flags sets.
FLAG_KEYS: dict[str, tuple[str, ...]] = {
    "failover": ("pause",),
    "replication": ("synchronous_mode", "synchronous_mode_strict"),
    "profile": ("ttl", "loop_wait", "retry_timeout"),
}


def describe_setting(flag: str, config: dict[str, Any]) -> str:
    """What a flag's keys in a dynamic configuration amount to, in the flag's own words."""
    if flag == "failover":
        return "manual" if config.get("pause") else "automatic"
    if flag == "replication":
        if not config.get("synchronous_mode"):
            return "async"
        return "sync-strict" if config.get("synchronous_mode_strict") else "sync"
    timings = tuple(config.get(k) for k in FLAG_KEYS["profile"])
    for name, values in TIMING_PROFILES.items():
        if timings == values:
            return name
    return "ttl {}, loop_wait {}, retry_timeout {}".format(*timings)


def reconfigure(settings: Settings, secrets: ClusterSecrets, flags: set[str]) -> list[str]:
    """Apply start's --failover / --replication / --profile to a running cluster.

    Only the flags given are applied (a plain 'start' must not, say, undo 'maintenance on').
    Returns one line per change made, as "replication: async -> sync"; an empty list when
    everything asked was already in effect.
    """
    api = PatroniAPI(settings, secrets.api_password)
    current = api.cluster_config()
    if current is None:
        raise ClusterError("no Patroni REST API answers; see 'platform.sh status'")
    desired = render.dynamic_config(settings)
    patch: dict[str, Any] = {}
    changes: list[str] = []
    for flag in sorted(flags):
        keys = FLAG_KEYS[flag]
        wanted = {k: desired[k] for k in keys}
        if all(current.get(k, _PATRONI_DEFAULTS.get(k)) == v for k, v in wanted.items()):
            continue
        before = describe_setting(flag, {**_PATRONI_DEFAULTS, **current})
        changes.append(f"{flag}: {before} -> {describe_setting(flag, wanted)}")
        patch.update(wanted)
    if not patch:
        return []
    api.patch_config(patch)

    def applied() -> bool:
        now = api.cluster_config() or {}
        return all(now.get(k) == v for k, v in patch.items())

    wait_for(applied, timeout=10, what="the new settings in etcd")
    if "replication" in flags and settings.patroni.replication != "async":
        wait_for(
            lambda: sync_standby_chosen(settings),
            timeout=30,
            what="a synchronous standby",
            hint="see 'platform.sh replication-status'",
        )
    log.info("applied to the running cluster: %s", "; ".join(changes))
    return changes


# What Patroni assumes for a key that its dynamic configuration does not hold.
_PATRONI_DEFAULTS: dict[str, Any] = {
    "pause": False,
    "synchronous_mode": False,
    "synchronous_mode_strict": False,
    "ttl": 30,
    "loop_wait": 10,
    "retry_timeout": 10,
}


def set_maintenance(settings: Settings, secrets: ClusterSecrets, on: bool) -> bool:
    """Pause (on) or resume (off) Patroni's automatic failover; returns the new paused state."""
    api = PatroniAPI(settings, secrets.api_password)
    api.patch_config({"pause": on})

    def applied() -> bool:
        config = api.cluster_config()
        return config is not None and bool(config.get("pause", False)) == on

    wait_for(applied, timeout=10, what=f"maintenance {'on' if on else 'off'} in etcd")
    return on


def is_paused(settings: Settings) -> bool:
    config = PatroniAPI(settings).cluster_config()
    return bool(config and config.get("pause", False))


@dataclass
class SyncReport:
    primary: str
    target_lsn: str
    synced: bool
    elapsed_s: float
    lag_bytes: dict[str, int | None] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# Bytes still to replay up to the target; a replica already past it (WAL written since, e.g.
# by a checkpoint) is 0 behind, not negative.
_SYNC_SQL = """
SELECT application_name, GREATEST(pg_wal_lsn_diff(%s::pg_lsn, replay_lsn), 0)::bigint
FROM pg_stat_replication
"""


def wait_sync(settings: Settings, secrets: ClusterSecrets, timeout: float = 30.0) -> SyncReport:
    """Wait until every replica has replayed the primary's current LSN (the guide's sync step)."""
    api = PatroniAPI(settings)
    primary = api.require_leader("to wait for")
    replicas = [n.name for n in settings.nodes if n.name != primary.name]
    began = time.monotonic()
    try:
        with connect_superuser(settings, secrets, primary) as conn:
            row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
            assert row is not None
            target = str(row[0])
            report = SyncReport(primary.name, target, False, 0.0)
            deadline = began + timeout
            while True:
                rows = conn.execute(_SYNC_SQL, (target,)).fetchall()
                behind = {str(r[0]): int(str(r[1])) if r[1] is not None else None for r in rows}
                report.lag_bytes = {name: behind.get(name) for name in replicas}
                done = all((lag := report.lag_bytes[n]) is not None and lag <= 0 for n in replicas)
                if done or time.monotonic() >= deadline:
                    report.synced = done
                    break
                time.sleep(0.02)
    except psycopg.Error as exc:
        raise ClusterError(f"cannot query the primary {primary.name}: {exc}") from exc
    report.elapsed_s = time.monotonic() - began
    return report


@dataclass
class SwitchoverResult:
    old_primary: str
    new_primary: str
    sync_wait_s: float
    elapsed_s: float


def switchover(
    settings: Settings,
    secrets: ClusterSecrets,
    candidate: str | None = None,
    timeout: float = 60.0,
) -> SwitchoverResult:
    """Planned switch: wait until the candidate has replayed everything, then switch roles."""
    api = PatroniAPI(settings, secrets.api_password)
    old = api.require_leader("to switch over from (use 'promote-slave' instead)")
    began = time.monotonic()
    if candidate is not None and candidate == old.name:
        raise ClusterError(f"{candidate} is already the primary; nothing to switch")

    # Right after a failover or a switchover the former master may still be rejoining: wait
    # (within the timeout) for it, or for any replica, to be running.
    synchronous = settings.patroni.replication != "async"

    def named_sync(name: str) -> bool:
        try:
            return api.get(settings.node(name), "/sync")[0] == 200
        except OSError:
            return False

    def running_replica() -> str | None:
        try:
            chosen = choose_candidate(settings, candidate)
        except ClusterError:
            return None
        if synchronous and candidate is None:
            # Patroni refuses (HTTP 412) a switchover to a replica that is not its synchronous
            # standby: take the one it named, once it has (not yet right after 'start
            # --replication sync').
            named = [n.name for n in settings.nodes if n.name != old.name and named_sync(n.name)]
            return named[0] if named else None
        return chosen

    target = wait_for(
        running_replica,
        timeout=timeout,
        what=f"{candidate or 'a replica'} running as a replica to switch over to",
        hint="see 'platform.sh status'",
    )
    if synchronous:
        wait_for(
            lambda: named_sync(target),
            timeout=timeout,
            what=f"Patroni naming {target} its synchronous standby (it refuses a switchover to "
            "another)",
            hint="see 'platform.sh replication-status'",
            interval=0.1,
        )
    sync = wait_sync(settings, secrets, timeout=min(timeout, 30.0))
    if not sync.synced:
        raise TimeoutExpired(
            f"{target} did not catch up with {old.name} in {sync.elapsed_s:.1f} s "
            f"(behind by {sync.lag_bytes}); nothing was switched"
        )
    api.post(old, "/switchover", {"leader": old.name, "candidate": target}, timeout=timeout)
    wait_routed(settings, target, timeout)
    log.info("switchover: %s is the primary (was %s)", target, old.name)
    return SwitchoverResult(old.name, target, sync.elapsed_s, time.monotonic() - began)


def rejoin(
    settings: Settings, secrets: ClusterSecrets, node_name: str, timeout: float = 120.0
) -> float:
    """Re-clone a replica from the primary (Patroni's reinitialize) and wait until it streams."""
    node = settings.node(node_name)
    api = PatroniAPI(settings, secrets.api_password)
    member = api.member(node)
    if member.role is Role.PRIMARY and member.state == "running":
        raise ClusterError(f"{node_name} is the primary; rejoin applies to replicas")
    began = time.monotonic()
    api.post(node, "/reinitialize", {"force": True}, timeout=30)

    def streaming() -> bool:
        m = api.member(node)
        return m.role is Role.REPLICA and m.replication_state == "streaming"

    def left_running() -> bool:
        return api.member(node).state != "running"

    # Patroni answers before it has stopped the node; see the clone begin, then finish.
    with contextlib.suppress(TimeoutExpired):
        wait_for(left_running, timeout=5, what=f"{node_name} starting its clone", interval=0.05)
    wait_for(streaming, timeout=timeout, what=f"{node_name} streaming again")
    return time.monotonic() - began
