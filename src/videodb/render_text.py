"""Human-readable renderings of the library's results (the CLI's tables)."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from videodb.backup_repo import BackupInfo
from videodb.backups.progress import size
from videodb.backups.schedule import ScheduledRun
from videodb.cluster.drill import DrillReport
from videodb.cluster.haproxy_stats import ServerStatus
from videodb.cluster.members import HistoryEntry, Member
from videodb.cluster.replication import ReplicationReport
from videodb.cluster.status import PlatformStatus
from videodb.config import Settings


def _mark(ok: bool) -> str:
    return "[green]healthy[/]" if ok else "[red]UNHEALTHY[/]"


def ports_table(settings: Settings, primary: str | None) -> Table:
    host = settings.address
    table = Table(title="video platform", title_justify="left")
    for column in ("service", "address", "purpose"):
        table.add_column(column)
    for node in settings.nodes:
        role = "master (read/write)" if node.name == primary else "replica (read only)"
        table.add_row(node.name, f"{host}:{node.port}", f"{role}, direct; infrastructure only")
    h = settings.haproxy
    table.add_row("HAProxy write", f"{host}:{h.write_port}", "writes, to the master only")
    table.add_row("HAProxy read", f"{host}:{h.read_port}", "reads, master + replicas")
    table.add_row("HAProxy stats", f"http://{host}:{h.stats_port}/stats", "stats; /metrics")
    a = settings.apps
    table.add_row("web", f"http://{host}:{a.web_port}/", "the page; every API by path")
    table.add_row("upload app", f"http://{host}:{a.upload_port}/docs", "POST /api/videos")
    table.add_row("metadata app", f"http://{host}:{a.metadata_port}/docs", "list, search, edit")
    table.add_row(
        "streaming app", f"http://{host}:{a.streaming_port}/docs", "/api/videos/{id}/stream"
    )
    return table


def status_table(report: PlatformStatus) -> Table:
    title = f"state {report.state_dir}; supervisord " + (
        f"pid {report.supervisor_pid}" if report.running else "NOT RUNNING"
    )
    if report.hosts > 1:
        title = f"host {report.host}; {title}"
    table = Table(title=title, title_justify="left")
    hosts = ("host",) if report.hosts > 1 else ()
    for column in (*hosts, "service", "role", "state", "pid", "ports", "health", "detail"):
        table.add_column(column)
    for s in report.services:
        pid = str(s.pid or "-")
        if s.postgres_pid:
            pid += f" (postgres {s.postgres_pid})"
        ports = ", ".join(f"{k} {v}" for k, v in s.ports.items())
        where = (s.host,) if report.hosts > 1 else ()
        table.add_row(*where, s.name, s.role, s.state, pid, ports, _mark(s.healthy), s.detail)
    return table


def certificate_table(report: PlatformStatus) -> Table:
    table = Table(title="certificates on this host", title_justify="left")
    for column in ("file", "for", "subject", "expires (UTC)", "days left"):
        table.add_column(column)
    for c in report.certificates:
        days = float(c["days_left"])
        left = f"{days:.0f}"
        if days <= 0:
            left = "[red]EXPIRED[/]"
        elif c["warning"]:
            left = f"[yellow]{left}[/]"
        expires = str(c["not_after"])[:16].replace("T", " ")
        table.add_row(str(c["file"]), str(c["role"]), str(c["subject"]), expires, left)
    return table


def replication_table(report: ReplicationReport) -> Table:
    title = (
        f"primary {report.primary} (host {report.primary_host})  timeline {report.timeline}  "
        f"current LSN {report.current_lsn}"
        f"  (alert above {report.max_lag_s:g} s)"
    )
    table = Table(title=title, title_justify="left")
    columns = ("replica", "state", "sent", "write", "flush", "replay", "lag bytes", "lag s")
    for column in (*columns, "slot", "sync"):
        table.add_column(column)
    for r in report.replicas:
        state = f"[green]{r.state}[/]" if r.ok else f"[red]{r.state}[/]"
        table.add_row(
            f"{r.name} ({r.host})",
            state,
            r.sent_lsn or "-",
            r.write_lsn or "-",
            r.flush_lsn or "-",
            r.replay_lsn or "-",
            "-" if r.lag_bytes is None else str(r.lag_bytes),
            "-" if r.lag_seconds is None else f"{r.lag_seconds:.3f}",
            f"{r.slot_name} ({'active' if r.slot_active else 'inactive'})" if r.slot_name else "-",
            r.sync_state or "-",
        )
    return table


def haproxy_table(servers: list[ServerStatus]) -> Table:
    table = Table()
    for column in ("backend", "server", "status", "sessions", "total", "connect ms", "check"):
        table.add_column(column)
    for s in servers:
        status = f"[green]{s.status}[/]" if s.up else f"[red]{s.status}[/]"
        table.add_row(
            s.backend,
            s.server,
            status,
            str(s.current_sessions),
            str(s.total_sessions),
            "-" if s.avg_connect_ms is None else str(s.avg_connect_ms),
            s.check_status,
        )
    return table


def drill_table(report: DrillReport) -> Table:
    table = Table(title=f"failover-test --fault {report.fault}", title_justify="left")
    columns = ("run", "old -> new master", "write down s", "read down s", "acked", "lost")
    more = ("in doubt", "read-only", "failed reads", "unprotected s", "two masters", "healed (s)")
    for column in (*columns, *more):
        table.add_column(column)
    for i, r in enumerate(report.runs, 1):
        table.add_row(
            str(i),
            f"{r.old_primary} -> {r.new_primary}",
            f"{r.write_downtime_s:.2f}",
            f"{r.read_downtime_s:.2f}",
            str(r.acknowledged),
            f"[red]{r.lost_acknowledged}[/]" if r.lost_acknowledged else "0",
            str(r.in_doubt),
            f"[red]{r.read_only_writes}[/]" if r.read_only_writes else "0",
            str(r.failed_reads),
            "-" if r.unprotected_s is None else f"{r.unprotected_s:.2f}",
            "[red]YES[/]" if r.two_primaries else "no",
            f"{'yes' if r.healed else '[red]NO[/]'} ({r.heal_s:.1f})",
        )
    if len(report.runs) > 1:
        summary = report.as_dict()
        w, rd = summary["write_downtime_s"], summary["read_downtime_s"]
        table.caption = (
            f"write downtime median {w['median']:.2f} s, worst {w['worst']:.2f} s; "
            f"read downtime median {rd['median']:.2f} s, worst {rd['worst']:.2f} s"
        )
    return table


def backups_table(infos: list[BackupInfo], repo: str, wal_bytes: int) -> Table:
    table = Table(title=f"backups in {repo}; archived WAL {size(wal_bytes)}", title_justify="left")
    table.add_column("id", no_wrap=True)
    for column in ("kind", "started (UTC)", "finished", "start LSN", "end LSN", "size", "verified"):
        table.add_column(column)
    for i in infos:
        if i.verified is None:
            verified = "not yet"
        else:
            when = (i.verified_at or "")[:19].replace("T", " ")
            verified = f"{'[green]yes' if i.verified else '[red]FAILED'}[/] {when}"
        table.add_row(
            i.id,
            i.kind if i.kind == "physical" else f"logical ({i.database})",
            i.started_at[:19].replace("T", " "),
            i.finished_at[11:19],
            i.start_lsn or "-",
            i.end_lsn or "-",
            size(i.size_bytes),
            verified,
        )
    return table


def scheduled_runs_table(runs: list[ScheduledRun]) -> Table:
    table = Table(title="scheduled runs (newest last)", title_justify="left")
    for column in ("kind", "started (UTC)", "finished", "outcome", "backup / error"):
        table.add_column(column)
    for r in runs:
        table.add_row(
            r.kind,
            r.started_at[:19].replace("T", " "),
            r.finished_at[11:19],
            "[green]ok[/]" if r.ok else "[red]FAILED[/]",
            r.backup_id or escape(r.error),
        )
    return table


def members_table(found: list[Member]) -> Table:
    table = Table(title="members (Patroni)", title_justify="left")
    for column in ("member", "host", "role", "state", "TL", "lag (bytes)", "pending restart"):
        table.add_column(column)
    for m in found:
        table.add_row(
            m.name,
            m.host,
            m.role,
            m.state,
            "" if m.timeline is None else str(m.timeline),
            "" if m.lag_bytes is None else str(m.lag_bytes),
            "[yellow]*[/]" if m.pending_restart else "",
        )
    return table


def history_table(entries: list[HistoryEntry]) -> Table:
    table = Table(title="failovers and switchovers", title_justify="left")
    for column in ("timeline", "ended at LSN", "at", "new leader", "reason"):
        table.add_column(column)
    for e in entries:
        table.add_row(str(e.timeline), str(e.lsn), e.at or "", e.new_leader or "", e.reason)
    return table
