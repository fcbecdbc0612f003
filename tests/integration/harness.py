"""Helpers for integration tests: a real cluster on free ports, its CLI, its connections."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic import SecretStr

from videodb.cluster import lifecycle
from videodb.cluster.health import check_health
from videodb.cluster.patroni_api import PatroniAPI
from videodb.cluster.postmaster import postmaster_pid
from videodb.cluster.supervisor import Supervisor, pid_alive, supervisord_pid
from videodb.cluster.topology import with_extra_nodes
from videodb.config import Settings, load_settings
from videodb.layout import StateLayout
from videodb.sandbox import MONITORING_OFF, make_workdir, write_sandbox_config
from videodb.secrets import APP_FILE, ClusterSecrets, load_secrets
from videodb.waiting import wait_for

CLI = str(Path(sys.executable).parent / "videodb")

# Every command the integration tests run goes through a shell with each libpq variable set to a
# wrong value (the README shows PGPASSWORD=... psql, so operators export these). Any of them that
# reached a tool, Patroni, PostgreSQL or an application would break it: a wrong password or user,
# a service that does not exist, TLS the servers do not offer, read-only sessions. All addresses
# are loopback or a socket directory that does not exist.
POISONED_LIBPQ_ENV = {
    "PGHOST": "/nonexistent-videodb-socket-dir",
    "PGHOSTADDR": "127.0.0.254",
    "PGPORT": "1",
    "PGDATABASE": "no_such_database",
    "PGUSER": "no_such_user",
    "PGPASSWORD": "wrong-password",
    "PGPASSFILE": "/nonexistent/pgpass",
    "PGSERVICE": "no-such-service",
    "PGSERVICEFILE": "/nonexistent/pg_service.conf",
    "PGOPTIONS": "-c default_transaction_read_only=on",
    "PGAPPNAME": "poisoned",
    "PGSSLMODE": "require",
    "PGCHANNELBINDING": "require",
    "PGGSSENCMODE": "require",
    "PGSSLROOTCERT": "/nonexistent/root.crt",
    "PGCONNECT_TIMEOUT": "not-a-number",
    "PGCLIENTENCODING": "NO_SUCH_ENCODING",
    "PGTARGETSESSIONATTRS": "standby",
    "PGREQUIREAUTH": "gss",
    "PGDATA": "/nonexistent/pgdata",
}
__all__ = ["CLI", "RunningCluster", "make_workdir", "write_sandbox_config"]


def operator_env() -> dict[str, str]:
    """This environment without the project's own variables, with every libpq one set wrong."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDEODB")}
    env.pop("DB_PASSWORD", None)
    env.pop("DB_USERNAME", None)
    env.update(POISONED_LIBPQ_ENV)
    return env


@dataclass
class RunningCluster:
    config_file: Path
    base_settings: Settings
    layout: StateLayout

    @property
    def settings(self) -> Settings:
        """The config's nodes plus those added with add-replica, and the application password
        'rotate password app' stored (as the CLI reads them)."""
        settings = with_extra_nodes(self.base_settings, self.layout)
        stored = self.layout.secret(APP_FILE)
        if not stored.exists():
            return settings
        password = SecretStr(stored.read_text(encoding="utf-8").strip())
        database = settings.database.model_copy(update={"app_password": password})
        return settings.model_copy(update={"database": database})

    @property
    def secrets(self) -> ClusterSecrets:
        return load_secrets(self.layout)

    def cli(self, *args: str, check: bool = False, timeout: float = 120) -> CliResult:
        """Run the CLI as an operator would, from a shell full of wrong libpq variables."""
        return self.cli_with_env({}, *args, check=check, timeout=timeout)

    def cli_with_env(
        self, extra: dict[str, str], *args: str, check: bool = False, timeout: float = 120
    ) -> CliResult:
        """The CLI with more environment variables (e.g. VIDEODB__STORAGE__SECRET_KEY)."""
        env = {**operator_env(), **extra}
        proc = subprocess.run(
            [CLI, "--config", str(self.config_file), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
        result = CliResult(proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise AssertionError(f"videodb {' '.join(args)} failed: {result}")
        return result

    def cli_json(self, *args: str, expect_rc: int | None = 0) -> Any:
        """Run a command with --json; check its exit code unless expect_rc is None."""
        result = self.cli(*args, "--json")
        assert expect_rc is None or result.rc == expect_rc, result
        return json.loads(result.stdout)

    def app_connect(self, port: int, **kwargs: Any) -> psycopg.Connection[tuple[Any, ...]]:
        db = self.settings.database
        params: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": port,
            "user": db.app_user,
            "password": db.app_password.get_secret_value(),
            "dbname": db.name,
            "connect_timeout": 3,
            "autocommit": True,
        }
        params.update(kwargs)
        return psycopg.connect(**params)

    @property
    def master(self) -> int:
        return self.settings.nodes[0].port

    @property
    def slave(self) -> int:
        return self.settings.nodes[1].port

    @property
    def write_port(self) -> int:
        return self.settings.haproxy.write_port

    @property
    def read_port(self) -> int:
        return self.settings.haproxy.read_port

    def supervisor(self) -> Supervisor:
        return Supervisor(self.layout)

    def app_url(self, service: str) -> str:
        """Base URL of an application ('upload', 'metadata', 'streaming') or of 'web'."""
        a = self.settings.apps
        ports = {"web": a.web_port, **{str(k): v for k, v in a.service_ports().items()}}
        port = ports[service]
        return f"http://127.0.0.1:{port}"


@dataclass
class CliResult:
    rc: int
    stdout: str
    stderr: str


def started_pids(cluster: RunningCluster) -> set[int]:
    pids: set[int] = set()
    sup = supervisord_pid(cluster.layout)
    if sup:
        pids.add(sup)
        pids |= {p.pid for p in cluster.supervisor().programs() if p.pid}
    for node in cluster.settings.nodes:
        pm = postmaster_pid(cluster.layout.node_data(node.name))
        if pm:
            pids.add(pm)
    return pids


def alive(pid: int) -> bool:
    """Running: an exited process not reaped yet (PID 1 here reaps late) does not count."""
    return pid_alive(pid)


@contextmanager
def cluster_lifecycle(
    request: pytest.FixtureRequest,
    prefix: str,
    extra_toml: str = "",
    apps_toml: str = "",
    monitoring_toml: str = MONITORING_OFF,
) -> Iterator[RunningCluster]:
    """Start a cluster through the CLI; stop it by its pids; keep its logs if a test failed."""
    workdir = make_workdir(prefix)
    config_file = write_sandbox_config(workdir, extra_toml, apps_toml, monitoring=monitoring_toml)
    loaded = load_settings(config_file, env={}, require_file=True)
    running = RunningCluster(config_file, loaded.settings, StateLayout(workdir / "state"))
    failed_before = request.session.testsfailed
    try:
        result = running.cli("start", "video", timeout=240)
        assert result.rc == 0, result
        yield running
    finally:
        pids = started_pids(running) if running.layout.root.exists() else set()
        lifecycle.stop(running.settings, running.layout)
        leftover = [p for p in pids if alive(p)]
        if request.session.testsfailed == failed_before and not leftover:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"\nintegration cluster kept for inspection: {workdir}")
        assert not leftover, f"processes left running after stop: {leftover}"


def set_apply_delay(cluster: RunningCluster, delay: str | None) -> None:
    """recovery_min_apply_delay on every replica, through Patroni's dynamic configuration."""
    api = PatroniAPI(cluster.settings, cluster.secrets.api_password)
    api.patch_config({"postgresql": {"parameters": {"recovery_min_apply_delay": delay}}})
    expected = delay or "0"

    def applied() -> bool:
        with cluster.app_connect(cluster.slave) as conn:
            row = conn.execute("SHOW recovery_min_apply_delay").fetchone()
        return row is not None and row[0] == expected

    wait_for(applied, timeout=30, what=f"recovery_min_apply_delay = {expected} on the slave")


def ensure_guide_roles(cluster: RunningCluster, timeout: float = 120) -> None:
    """Healthy, master on the first node, every replica streaming, applications ready."""

    def healthy() -> bool:
        return check_health(cluster.settings).healthy

    wait_for(healthy, timeout=timeout, what="a healthy cluster before the test")
    first = cluster.settings.nodes[0].name
    leader = PatroniAPI(cluster.settings).leader()
    if leader is None or leader.name != first:
        switched = cluster.cli("switchover", "--to", first, timeout=timeout)
        assert switched.rc == 0, switched
        wait_for(healthy, timeout=timeout, what="a healthy cluster after switching back")
    status = cluster.cli_json("status", expect_rc=None)
    stopped = [s["name"] for s in status["services"] if s["role"] == "app" and s["pid"] is None]
    if stopped:
        started = cluster.cli("start", "apps", timeout=timeout)
        assert started.rc == 0, started
    wait_for(
        lambda: cluster.cli("status").rc == 0,
        timeout=timeout,
        what="'platform.sh status' healthy (every process, the applications ready)",
    )
