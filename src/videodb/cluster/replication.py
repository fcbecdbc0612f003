"""Replication as the primary sees it: per replica its LSNs, lag, slot and sync state."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg

from videodb.cluster.patroni_api import MemberStatus, PatroniAPI, Role
from videodb.cluster.pg import connect_superuser
from videodb.config import NodeSpec, Settings
from videodb.errors import ClusterError
from videodb.secrets import ClusterSecrets

DEFAULT_MAX_LAG_S = 5.0  # the guide: alert when replication lag exceeds 5 seconds


def slot_name(member: str) -> str:
    """Patroni's slot name for a member: lower case, anything else than [a-z0-9_] becomes _."""
    return re.sub(r"[^a-z0-9_]", "_", member.lower())


@dataclass
class ReplicaStatus:
    name: str
    state: str  # streaming, catchup, startup, backup, down
    sent_lsn: str | None = None
    write_lsn: str | None = None
    flush_lsn: str | None = None
    replay_lsn: str | None = None
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    sync_state: str | None = None
    slot_name: str | None = None
    slot_active: bool | None = None
    problem: str | None = None
    host: str = ""  # the host it runs on (the cluster file's; 'local' on one machine)

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass
class ReplicationReport:
    primary: str
    current_lsn: str
    timeline: int
    max_lag_s: float
    replicas: list[ReplicaStatus] = field(default_factory=list)
    primary_host: str = ""

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.replicas)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        for item, replica in zip(data["replicas"], self.replicas, strict=True):
            item["ok"] = replica.ok
        return data


_STAT_SQL = """
SELECT application_name, state, sent_lsn::text, write_lsn::text, flush_lsn::text,
       replay_lsn::text, pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint,
       extract(epoch FROM replay_lag)::float8, extract(epoch FROM write_lag)::float8, sync_state
FROM pg_stat_replication
"""
_SLOT_SQL = "SELECT slot_name, active FROM pg_replication_slots WHERE slot_type = 'physical'"


def replication_report(
    settings: Settings, secrets: ClusterSecrets, max_lag_s: float = DEFAULT_MAX_LAG_S
) -> ReplicationReport:
    api = PatroniAPI(settings)
    members = {m.name: m for m in api.members()}
    primary = api.require_leader("to read the replication state from")
    try:
        with connect_superuser(settings, secrets, primary) as conn:
            lsn_row = conn.execute(
                "SELECT pg_current_wal_lsn()::text, timeline_id FROM pg_control_checkpoint()"
            ).fetchone()
            stats = conn.execute(_STAT_SQL).fetchall()
            slots = {str(r[0]): bool(r[1]) for r in conn.execute(_SLOT_SQL).fetchall()}
    except psycopg.Error as exc:
        raise ClusterError(f"cannot query the primary {primary.name}: {exc}") from exc
    assert lsn_row is not None
    report = ReplicationReport(
        primary=primary.name,
        current_lsn=str(lsn_row[0]),
        timeline=int(str(lsn_row[1])),
        max_lag_s=max_lag_s,
        primary_host=settings.node_host(primary).name,
    )
    by_name = {str(row[0]): row for row in stats}
    for node in settings.nodes:
        if node.name == primary.name:
            continue
        replica = _replica(
            node.name, by_name.get(node.name), slots, members.get(node.name), max_lag_s
        )
        replica.host = settings.node_host(node).name
        if replica.lag_seconds is not None and replica.lag_seconds > max_lag_s:
            _confirm_lag(settings, secrets, node, report.current_lsn, replica, max_lag_s)
        report.replicas.append(replica)
    return report


def _confirm_lag(
    settings: Settings,
    secrets: ClusterSecrets,
    node: NodeSpec,
    primary_lsn: str,
    replica: ReplicaStatus,
    max_lag_s: float,
) -> None:
    """A lag over the limit, asked of the replica itself. Right after an idle spell the
    primary's replay_lag counts the idle time until the replica's next report (up to
    wal_receiver_status_interval): a replica that has replayed everything the primary had
    written when asked is not lagging."""
    try:
        with connect_superuser(settings, secrets, node) as conn:
            row = conn.execute(
                "SELECT pg_wal_lsn_diff(%s::pg_lsn, pg_last_wal_replay_lsn())", (primary_lsn,)
            ).fetchone()
    except (ClusterError, psycopg.Error):
        return  # not reachable from here: the primary's view stands
    if row is None or row[0] is None or float(str(row[0])) > 0:
        return  # it really is behind
    replica.lag_seconds = 0.0
    replica.lag_bytes = 0
    replica.problem = (
        f"{replica.name}: lag 0.0 s exceeds {max_lag_s:.1f} s" if max_lag_s < 0 else None
    )


def _replica(
    name: str,
    row: tuple[Any, ...] | None,
    slots: dict[str, bool],
    member: MemberStatus | None,
    max_lag_s: float,
) -> ReplicaStatus:
    slot = slot_name(name)
    status = ReplicaStatus(name=name, state="down")
    if slot in slots:
        status.slot_name, status.slot_active = slot, slots[slot]
    if row is None:
        why = "not connected to the primary"
        if member is not None and not member.reachable:
            why = "down (Patroni not reachable)"
        elif member is not None and member.state != "running":
            why = f"down (postgres {member.state})"
        elif member is not None and member.role is Role.PRIMARY:
            why = "also claims to be primary"
        status.problem = f"{name}: {why}"
        return status
    _, state, sent, write, flush, replay, lag_bytes, replay_lag, write_lag, sync = row
    status.state = str(state)
    status.sent_lsn, status.write_lsn, status.flush_lsn, status.replay_lsn = (
        sent,
        write,
        flush,
        replay,
    )
    status.lag_bytes = int(lag_bytes) if lag_bytes is not None else None
    status.sync_state = sync
    # pg_stat_replication clears replay_lag once a replica has caught up and nothing new comes.
    if replay_lag is not None:
        status.lag_seconds = round(float(replay_lag), 3)
    elif status.lag_bytes == 0:
        status.lag_seconds = 0.0
    elif write_lag is not None:
        status.lag_seconds = round(float(write_lag), 3)
    if status.state != "streaming":
        status.problem = f"{name}: state {status.state}, not streaming"
    elif status.lag_seconds is not None and status.lag_seconds > max_lag_s:
        status.problem = f"{name}: lag {status.lag_seconds:.1f} s exceeds {max_lag_s:.1f} s"
    return status
