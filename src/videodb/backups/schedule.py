"""The backup schedule and the record of scheduled runs, both kept in the backup repository.

schedule.json          how often a base backup and a dump are due, and how many to keep
scheduled-runs.jsonl   one line per scheduled run: kind, start, end, outcome, backup id or error

A kind is due one interval after its newest backup (scheduled or not), or at once when it has
none. The scheduler (backups/scheduler.py) runs what is due.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from videodb.backup_repo import BackupInfo, BackupRepo, now_iso
from videodb.errors import ConfigError

ScheduleKind = Literal["base", "dump"]
KINDS: tuple[ScheduleKind, ...] = ("base", "dump")
KEEP_RUNS = 500  # lines kept in scheduled-runs.jsonl
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_interval(text: str, what: str) -> int:
    """'30s', '15m', '6h', '1d', '1w' -> seconds."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", text)
    if not match or int(match.group(1)) == 0:
        raise ConfigError(
            f"{what} {text!r} is not an interval; give a number and a unit (s, m, h, d, w): "
            "e.g. 6h or 1d"
        )
    return int(match.group(1)) * _UNITS[match.group(2)]


def describe_interval(seconds: int) -> str:
    for unit, size in sorted(_UNITS.items(), key=lambda item: -item[1]):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True)
class Schedule:
    base_every_s: int | None
    dump_every_s: int | None
    keep: int | None  # backups of each kind kept by 'backup prune' after each run; None: all
    since: str  # when it was set (ISO 8601)

    def every(self, kind: ScheduleKind) -> int | None:
        return self.base_every_s if kind == "base" else self.dump_every_s


@dataclass(frozen=True)
class ScheduledRun:
    kind: ScheduleKind
    started_at: str
    finished_at: str
    ok: bool
    backup_id: str | None = None
    error: str = ""


def schedule_path(repo: BackupRepo) -> Path:
    return repo.root / "schedule.json"


def runs_path(repo: BackupRepo) -> Path:
    return repo.root / "scheduled-runs.jsonl"


def read_schedule(repo: BackupRepo) -> Schedule | None:
    try:
        return Schedule(**json.loads(schedule_path(repo).read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(
            f"the backup schedule {schedule_path(repo)} cannot be read ({exc}); set it again "
            "with 'platform.sh backup schedule --base-every 1d'"
        ) from exc


def write_schedule(repo: BackupRepo, schedule: Schedule | None) -> None:
    path = schedule_path(repo)
    if schedule is None:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(schedule), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def record_run(repo: BackupRepo, run: ScheduledRun) -> None:
    path = runs_path(repo)
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    lines = [*lines[-(KEEP_RUNS - 1) :], json.dumps(asdict(run))]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_runs(repo: BackupRepo, limit: int = 20) -> list[ScheduledRun]:
    """The newest `limit` scheduled runs, oldest first."""
    path = runs_path(repo)
    if not path.exists():
        return []
    runs = []
    for line in path.read_text(encoding="utf-8").splitlines()[-limit:]:
        try:
            runs.append(ScheduledRun(**json.loads(line)))
        except (ValueError, TypeError):
            continue
    return runs


def epoch(iso: str) -> float:
    parsed = datetime.fromisoformat(iso)
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def kind_of(info: BackupInfo) -> ScheduleKind:
    return "base" if info.kind == "physical" else "dump"


def last_success(backups: list[BackupInfo], kind: ScheduleKind) -> float | None:
    """When the newest backup of `kind` finished (epoch seconds)."""
    times = [epoch(b.finished_at) for b in backups if kind_of(b) == kind]
    return max(times) if times else None


def due_at(schedule: Schedule, kind: ScheduleKind, backups: list[BackupInfo]) -> float | None:
    """When the next backup of `kind` is due (epoch seconds); None when not scheduled."""
    every = schedule.every(kind)
    if every is None:
        return None
    last = last_success(backups, kind)
    return epoch(schedule.since) if last is None else last + every


def new_schedule(base_every: str | None, dump_every: str | None, keep: int | None) -> Schedule:
    if base_every is None and dump_every is None:
        raise ConfigError(
            "give --base-every and/or --dump-every (e.g. --base-every 1d --dump-every 6h), or "
            "--off to stop the schedule"
        )
    if keep is not None and keep < 1:
        raise ConfigError(f"--keep {keep}: keep at least 1 backup of each kind")
    return Schedule(
        base_every_s=parse_interval(base_every, "--base-every") if base_every else None,
        dump_every_s=parse_interval(dump_every, "--dump-every") if dump_every else None,
        keep=keep,
        since=now_iso(),
    )
