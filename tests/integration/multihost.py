"""A platform across simulated hosts: 3 database/etcd hosts and 1 application host.

Every host is started the way an operator would on a real machine, with its own state directory
and one command (`platform.sh --cluster FILE --host NAME start video`), all four at once, inside
its own network namespace. Stopped by `stop` on each host, then every process left in the
namespaces is killed by pid and the namespaces are deleted.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest

from tests.integration.harness import CLI, CliResult, operator_env
from tests.integration.simhosts import SimNetwork
from videodb.config import Settings, load_settings
from videodb.layout import StateLayout
from videodb.sandbox import make_workdir
from videodb.secrets import bundle_path

T = TypeVar("T")
DB_HOSTS = ("db1", "db2", "db3")
APP_HOST = "app1"


def cluster_toml(net: SimNetwork, db_hosts: tuple[str, ...], extra: str = "") -> str:
    lines = [
        "[patroni]",
        'replication = "sync"',
        "[postgresql.parameters]",
        'shared_buffers = "64MB"',
        "",
    ]
    for name, host in net.hosts.items():
        is_db = name in db_hosts
        lines += [
            "[[hosts]]",
            f'name = "{name}"',
            f'address = "{host.address}"',
            f"etcd = {'true' if is_db else 'false'}",
            f"haproxy = {'false' if is_db else 'true'}",
            f"apps = {'false' if is_db else 'true'}",
            "",
        ]
    for i, name in enumerate(db_hosts, start=1):
        lines += [
            "[[nodes]]",
            f'name = "postgres-video-{i}"',
            f'host = "{name}"',
            "port = 5433",
            "api_port = 8008",
            "",
        ]
    return "\n".join(lines) + extra


@dataclass
class SimCluster:
    net: SimNetwork
    workdir: Path
    cluster_file: Path

    def state_dir(self, host: str) -> Path:
        return self.workdir / host

    def settings(self, host: str = APP_HOST) -> Settings:
        sets = [f"host={host}", f"secrets_bundle={bundle_path(self.cluster_file)}"]
        loaded = load_settings(self.cluster_file, env={}, assignments=sets, require_file=True)
        return loaded.settings

    def layout(self, host: str) -> StateLayout:
        return StateLayout(self.state_dir(host))

    def argv(self, host: str, *args: str) -> list[str]:
        base = [CLI, "--cluster", str(self.cluster_file), "--host", host]
        return self.net.argv(host, [*base, "--state-dir", str(self.state_dir(host)), *args])

    def cli(self, host: str, *args: str, timeout: float = 120) -> CliResult:
        proc = subprocess.run(
            self.argv(host, *args),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=operator_env(),
            check=False,
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    def cli_json(self, host: str, *args: str, expect_rc: int | None = 0) -> Any:
        result = self.cli(host, *args, "--json")
        assert expect_rc is None or result.rc == expect_rc, result
        return json.loads(result.stdout)

    def start_all(self, hosts: tuple[str, ...], timeout: float = 300) -> dict[str, CliResult]:
        """`start video` on every host at once, as operators on four machines would."""
        procs = {
            h: subprocess.Popen(
                self.argv(h, "start", "video"),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=operator_env(),
            )
            for h in hosts
        }
        results = {}
        deadline = time.monotonic() + timeout
        for host, proc in procs.items():
            try:
                out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            results[host] = CliResult(proc.returncode, out, err)
        return results

    def call(self, host: str, fn: Callable[[], T], timeout: float = 120) -> T:
        return self.net.call(host, fn, timeout)

    def connect(self, host: str, port: int, target: str | None = None) -> psycopg.Connection[Any]:
        """An application connection from `host` to `target`'s address (default: its own).

        Call it inside `net.inside(host)` (or `call`): the socket belongs to that network.
        """
        s = self.settings(host)
        address = s.host_spec(target).address if target else s.address
        db = s.database
        return psycopg.connect(
            host=address,
            port=port,
            user=db.app_user,
            password=db.app_password.get_secret_value(),
            dbname=db.name,
            connect_timeout=2,
            autocommit=True,
        )


@contextmanager
def sim_cluster_lifecycle(
    request: pytest.FixtureRequest, db_hosts: tuple[str, ...] = DB_HOSTS
) -> Iterator[SimCluster]:
    failed_before = request.session.testsfailed
    workdir = make_workdir("videodb-mh-")
    net = SimNetwork()
    started: list[str] = []
    try:
        for name in (*db_hosts, APP_HOST):
            net.add_host(name)
        cluster_file = workdir / "cluster.toml"
        cluster_file.write_text(cluster_toml(net, db_hosts))
        sim = SimCluster(net, workdir, cluster_file)
        init = subprocess.run(
            [CLI, "cluster", "init", str(cluster_file)],
            capture_output=True,
            text=True,
            env=operator_env(),
            timeout=60,
            check=False,
        )
        assert init.returncode == 0, init
        started = [*db_hosts, APP_HOST]
        results = sim.start_all(tuple(started))
        for host, result in results.items():
            assert result.rc == 0, f"start on {host} failed: {result}"
        yield sim
    finally:
        problems = []
        for host in started:
            sim_stop = [CLI, "--cluster", str(workdir / "cluster.toml"), "--host", host]
            sim_stop += ["--state-dir", str(workdir / host), "stop"]
            try:
                subprocess.run(
                    net.argv(host, sim_stop),
                    capture_output=True,
                    env=operator_env(),
                    timeout=120,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                problems.append(f"stop on {host} timed out")
        problems += net.close()
        if request.session.testsfailed == failed_before and not problems:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"\nsimulated hosts' state kept for inspection: {workdir}")
        assert not problems, problems
