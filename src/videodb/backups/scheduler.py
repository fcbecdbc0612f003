"""The backup scheduler: a program of the first monitoring host's supervisord.

Every second it reads the repository's schedule (backups/schedule.py) and runs what is due: a
base backup or a dump from the master, the videos' bytes they name, then `backup prune --keep`
when the schedule keeps a number. Each run is recorded in the repository, and the outcome is
exported for Prometheus on `monitoring.scheduler_port`:

  videodb_backup_schedule_interval_seconds{kind}   the schedule (absent: not scheduled)
  videodb_backup_due_timestamp_seconds{kind}       when the next backup is due
  videodb_backup_last_success_timestamp_seconds{kind}
  videodb_backup_last_run_ok{kind}                 1/0: the last scheduled run's outcome
  videodb_backup_runs_total{kind,outcome}
  videodb_backup_info{id,kind,verified}            each backup, valued its end time

A run holds the platform's lock like any backup command; while another command holds it, the
run waits for the next try (10 s).

    python -m videodb.backups.scheduler --settings STATE/conf/settings.json --state STATE
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import time
from pathlib import Path
from types import FrameType

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from videodb.backup_repo import BackupRepo, now_iso, repo_for
from videodb.backups import logical, physical, prune, videos
from videodb.backups.schedule import (
    KINDS,
    ScheduledRun,
    ScheduleKind,
    due_at,
    epoch,
    kind_of,
    last_success,
    read_runs,
    read_schedule,
    record_run,
)
from videodb.config import Settings
from videodb.errors import VideoDBError
from videodb.layout import StateLayout
from videodb.platform_lock import PlatformBusyError, platform_lock
from videodb.secrets import load_secrets

log = logging.getLogger("videodb.scheduler")
BUSY_RETRY_S = 10.0
FAILED_RETRY_S = 60.0  # a failed run is tried again after this (or its interval, if shorter)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.interval = Gauge(
            "videodb_backup_schedule_interval_seconds", "Backup schedule", ["kind"], registry=r
        )
        self.due = Gauge(
            "videodb_backup_due_timestamp_seconds", "Next backup due", ["kind"], registry=r
        )
        self.last_ok = Gauge(
            "videodb_backup_last_success_timestamp_seconds",
            "End of the newest backup",
            ["kind"],
            registry=r,
        )
        self.run_ok = Gauge(
            "videodb_backup_last_run_ok", "The last scheduled run succeeded", ["kind"], registry=r
        )
        self.runs = Counter(
            "videodb_backup_runs", "Scheduled runs", ["kind", "outcome"], registry=r
        )
        self.info = Gauge(
            "videodb_backup_info",
            "A backup in the repository, valued its end time",
            ["id", "kind", "verified"],
            registry=r,
        )


def _drop(gauge: Gauge, kind: str) -> None:
    with contextlib.suppress(KeyError):
        gauge.remove(kind)


class Scheduler:
    def __init__(self, settings: Settings, layout: StateLayout) -> None:
        self.settings = settings
        self.layout = layout
        self.repo: BackupRepo = repo_for(settings, layout)
        self.metrics = Metrics()
        self.retry_at: dict[ScheduleKind, float] = {}

    def tick(self, now: float) -> None:
        schedule = read_schedule(self.repo)
        backups = self.repo.all()
        m = self.metrics
        m.info.clear()
        for b in backups:
            verified = "unknown" if b.verified is None else str(b.verified).lower()
            m.info.labels(b.id, kind_of(b), verified).set(epoch(b.finished_at))
        for kind in KINDS:
            last = last_success(backups, kind)
            if last is not None:
                m.last_ok.labels(kind).set(last)
            due = due_at(schedule, kind, backups) if schedule else None
            every = schedule.every(kind) if schedule else None
            if due is None or every is None:
                for gauge in (m.interval, m.due, m.run_ok):
                    _drop(gauge, kind)
                continue
            m.interval.labels(kind).set(every)
            m.due.labels(kind).set(due)
            if now >= due and now >= self.retry_at.get(kind, 0.0):
                self.run(kind, every)

    def run(self, kind: ScheduleKind, every: int) -> None:
        started = now_iso()
        try:
            with platform_lock(self.layout.root, command=f"scheduled {kind} backup"):
                backup_id = self._backup(kind)
        except PlatformBusyError as exc:
            log.info("%s backup due but the platform is busy: %s", kind, exc)
            self.retry_at[kind] = time.time() + BUSY_RETRY_S
            return
        except (VideoDBError, OSError) as exc:
            self._record(kind, started, False, None, str(exc) or type(exc).__name__)
            self.retry_at[kind] = time.time() + min(float(every), FAILED_RETRY_S)
            return
        except Exception as exc:
            log.exception("scheduled %s backup failed", kind)
            self._record(kind, started, False, None, f"{type(exc).__name__}: {exc}")
            self.retry_at[kind] = time.time() + min(float(every), FAILED_RETRY_S)
            return
        self._record(kind, started, True, backup_id, "")
        self.retry_at.pop(kind, None)

    def _backup(self, kind: ScheduleKind) -> str:
        secrets = load_secrets(self.layout)
        say = log.info
        if kind == "base":
            info = physical.take_base_backup(self.settings, self.layout, secrets, progress=say)
        else:
            info = logical.dump_database(self.settings, self.layout, secrets, progress=say)
        info.extra["scheduled"] = True
        self.repo.save(info)
        videos.copy_videos(self.settings, self.layout, self.repo, info, secrets, progress=say)
        schedule = read_schedule(self.repo)
        if schedule is not None and schedule.keep is not None:
            result = prune.prune(self.settings, self.repo, schedule.keep)
            if result.deleted:
                log.info("pruned %s", ", ".join(result.deleted))
        return info.id

    def _record(
        self, kind: ScheduleKind, started: str, ok: bool, backup_id: str | None, error: str
    ) -> None:
        run = ScheduledRun(kind, started, now_iso(), ok, backup_id, error)
        try:
            record_run(self.repo, run)
        except OSError as exc:
            log.error("cannot record the run in %s: %s", self.repo.root, exc)
        self.metrics.run_ok.labels(kind).set(1 if ok else 0)
        self.metrics.runs.labels(kind, "success" if ok else "failure").inc()
        if ok:
            log.info("scheduled %s backup %s done", kind, backup_id)
        else:
            log.error("scheduled %s backup failed: %s", kind, error)

    def restore_outcomes(self) -> None:
        """The last recorded outcome of each kind (the scheduler restarted)."""
        for run in read_runs(self.repo, limit=50):
            self.metrics.run_ok.labels(run.kind).set(1 if run.ok else 0)


def _stop(signum: int, _: FrameType | None) -> None:
    """supervisord stops the scheduler: a backup under way is abandoned the way an interrupted
    'backup-video' is (its tool stopped, nothing half-copied kept)."""
    log.info("signal %d: stopping", signum)
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the backup schedule of one state directory.")
    parser.add_argument("--settings", type=Path, required=True)
    parser.add_argument("--state", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = Settings.model_validate(json.loads(args.settings.read_text(encoding="utf-8")))
    scheduler = Scheduler(settings, StateLayout(args.state))
    scheduler.restore_outcomes()
    start_http_server(
        settings.monitoring.scheduler_port,
        addr=settings.address,
        registry=scheduler.metrics.registry,
    )
    signal.signal(signal.SIGTERM, _stop)
    log.info(
        "backup scheduler of %s, metrics on %s:%d",
        args.state,
        settings.address,
        settings.monitoring.scheduler_port,
    )
    while True:
        try:
            scheduler.tick(time.time())
        except VideoDBError as exc:
            log.error("%s", exc)
        time.sleep(1.0)


if __name__ == "__main__":
    main()
