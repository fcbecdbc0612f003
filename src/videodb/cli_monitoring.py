"""The monitoring commands' bodies: `alerts` and `backup schedule` (cli.py declares them and
their options, and passes the settings in)."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from videodb.backup_repo import repo_for
from videodb.backups.schedule import (
    KINDS,
    describe_interval,
    due_at,
    new_schedule,
    read_runs,
    read_schedule,
    write_schedule,
)
from videodb.cluster.alerts import Alert, active_alerts
from videodb.config import Settings
from videodb.errors import ConfigError
from videodb.layout import StateLayout

out = Console(width=None if sys.stdout.isatty() else 160)


def _print_json(data: Any) -> None:
    out.print_json(json.dumps(data, default=str))


def alerts_table(found: list[Alert]) -> Table:
    table = Table(title="alerts (Prometheus)", title_justify="left")
    for column in ("state", "alert", "about", "since (UTC)", "summary"):
        table.add_column(column)
    for a in found:
        colour = "red" if a.state == "firing" else "yellow"
        table.add_row(
            f"[{colour}]{a.state}[/]",
            a.name,
            escape(a.about),
            a.since[:19].replace("T", " "),
            escape(a.summary),
        )
    return table


def show_alerts(settings: Settings, as_json: bool) -> None:
    found = active_alerts(settings)
    if as_json:
        _print_json([{**asdict(a), "about": a.about} for a in found])
        return
    if not found:
        out.print("no alert: every rule's condition is false", highlight=False)
        return
    out.print(alerts_table(found))


def backup_schedule(
    settings: Settings,
    layout: StateLayout,
    base_every: str | None,
    dump_every: str | None,
    keep: int | None,
    off: bool,
    as_json: bool,
) -> None:
    host = settings.scheduler_host()
    if host is None:
        raise ConfigError(
            "the backup scheduler runs with the monitoring, which is off (monitoring.enabled = "
            "false); turn it on and run 'platform.sh start video'"
        )
    if host.name != settings.this_host().name:
        raise ConfigError(
            f"the backup scheduler runs on host {host.name}, with its repository: run this "
            f"there (platform.sh --host {host.name} backup schedule ...)"
        )
    repo = repo_for(settings, layout)
    if off:
        write_schedule(repo, None)
    elif base_every is not None or dump_every is not None or keep is not None:
        repo.root.mkdir(parents=True, exist_ok=True)
        write_schedule(repo, new_schedule(base_every, dump_every, keep))
    schedule = read_schedule(repo)
    backups = repo.all()
    due = {k: due_at(schedule, k, backups) if schedule else None for k in KINDS}
    if as_json:
        _print_json(
            {
                "schedule": asdict(schedule) if schedule else None,
                "due": {
                    k: datetime.fromtimestamp(v, UTC).isoformat(timespec="seconds") if v else None
                    for k, v in due.items()
                },
                "runs": [asdict(r) for r in read_runs(repo, 10)],
            }
        )
        return
    if schedule is None:
        out.print(
            "no backup schedule; set one with 'platform.sh backup schedule --base-every 1d'",
            highlight=False,
        )
        return
    for kind in KINDS:
        every = schedule.every(kind)
        when = due[kind]
        if every is None or when is None:
            out.print(f"{kind}: not scheduled", highlight=False)
            continue
        at = datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds")
        out.print(f"{kind}: every {describe_interval(every)}, next due {at}", highlight=False)
    out.print(
        f"keep: {schedule.keep if schedule.keep else 'every backup'}; set {schedule.since}; "
        f"runs recorded in {repo.root}",
        highlight=False,
    )
