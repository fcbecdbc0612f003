"""A throwaway PostgreSQL on a copy of a data directory: for a restore test and for the point-in-
time recovery that prepares a restore, beside the running cluster and invisible to it.

It listens on a private unix socket only (no TCP), trusts local connections there (the socket's
directory is the service user's, mode 0700), archives nothing and waits for no standby.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from videodb.config import Settings
from videodb.errors import ClusterError, TimeoutExpired
from videodb.layout import ServiceUser, as_user
from videodb.ports import free_ports
from videodb.runner import tool_env


@dataclass
class Instance:
    data_dir: Path
    socket_dir: Path
    port: int
    log: Path
    process: subprocess.Popen[bytes]
    superuser: str

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(
            host=str(self.socket_dir),
            port=self.port,
            user=self.superuser,
            dbname=dbname,
            autocommit=True,
            connect_timeout=3,
        )

    def log_tail(self, lines: int = 12) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n    ".join(text.strip().splitlines()[-lines:])


@contextmanager
def throwaway_instance(
    settings: Settings,
    data_dir: Path,
    work_dir: Path,
    user: ServiceUser,
    *,
    parameters: dict[str, str] | None = None,
    ready: str = "accepting",  # or "promoted": out of recovery
    timeout: float = 600.0,
    on_wait: Any = None,
) -> Iterator[Instance]:
    """Start postgres on `data_dir` (which it may change: pass a copy) and stop it afterwards."""
    socket_dir = work_dir / "socket"
    socket_dir.mkdir(mode=0o700, exist_ok=True)
    hba = work_dir / "pg_hba.conf"
    hba.write_text("local all all trust\n", encoding="utf-8")
    log = work_dir / "postgres.log"
    for path in (socket_dir, hba, work_dir):
        if not user.is_current:
            os.chown(path, user.uid, user.gid)
    port = free_ports(1)[0]
    settings_args = {
        "port": str(port),
        "listen_addresses": "",
        "unix_socket_directories": str(socket_dir),
        "hba_file": str(hba),
        "archive_mode": "off",
        "synchronous_standby_names": "",
        "logging_collector": "off",
        "hot_standby": "on",
        "shared_buffers": "128MB",
        **(parameters or {}),
    }
    argv = [str(settings.postgresql.bin_dir / "postgres"), "-D", str(data_dir)]
    for key, value in settings_args.items():
        argv += ["-c", f"{key}={value}"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            as_user(user, argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=tool_env(),
        )
    instance = Instance(data_dir, socket_dir, port, log, process, settings.database.superuser)
    try:
        _wait_ready(instance, ready, timeout, on_wait)
        yield instance
    finally:
        _stop(instance)


def _wait_ready(instance: Instance, ready: str, timeout: float, on_wait: Any) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if instance.process.poll() is not None:
            raise ClusterError(
                f"the throwaway PostgreSQL on {instance.data_dir} stopped (exit "
                f"{instance.process.returncode}):\n    {instance.log_tail()}"
            )
        try:
            with instance.connect() as conn:
                row = conn.execute(
                    "SELECT pg_is_in_recovery(), "
                    "coalesce(pg_last_wal_replay_lsn(), pg_current_wal_lsn())::text"
                ).fetchone()
            assert row is not None
            if ready == "accepting" or not row[0]:
                return
            if on_wait is not None:
                on_wait(str(row[1]))
        except psycopg.OperationalError:
            pass  # not accepting connections yet (starting up, or not consistent yet)
        if time.monotonic() > deadline:
            raise TimeoutExpired(
                f"the throwaway PostgreSQL on {instance.data_dir} not ready after {timeout:.0f} s:"
                f"\n    {instance.log_tail()}"
            )
        time.sleep(0.2)


def _stop(instance: Instance) -> None:
    """Fast shutdown (SIGINT): a checkpoint, then exit."""
    process = instance.process
    if process.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
