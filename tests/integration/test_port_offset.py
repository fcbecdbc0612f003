"""A second platform beside the first with one option: --port-offset N moves every port."""

from __future__ import annotations

import shutil

import pytest

from tests.integration.harness import RunningCluster, alive, make_workdir
from videodb.cluster import lifecycle
from videodb.config import load_settings
from videodb.layout import StateLayout
from videodb.ports import port_is_free

pytestmark = pytest.mark.integration


def _free_offset(cluster: RunningCluster) -> int:
    ports = list(cluster.settings.all_ports().values())
    for offset in range(1, 2000):
        if all(p + offset <= 65535 and port_is_free("127.0.0.1", p + offset) for p in ports):
            return offset
    raise AssertionError("no offset leaves every port free")


def test_a_second_platform_runs_beside_the_first_with_port_offset(cluster: RunningCluster) -> None:
    offset = _free_offset(cluster)
    workdir = make_workdir("videodb-offset-")  # PostgreSQL's OS user must reach it
    state = workdir / "state"
    args = ("--port-offset", str(offset), "--state-dir", str(state))
    second = load_settings(
        cluster.config_file, env={}, assignments=[f"port_offset={offset}"], require_file=True
    ).settings
    layout = StateLayout(state)
    try:
        started = cluster.cli(*args, "--set", "apps.autostart=false", "start", "video", timeout=240)
        assert started.rc == 0, started
        report = cluster.cli_json(*args, "status", expect_rc=None)
        by_name = {s["name"]: s for s in report["services"]}
        master = by_name["postgres-video-master"]
        assert master["ports"]["postgres"] == cluster.master + offset
        assert by_name["haproxy-postgres"]["ports"]["write"] == cluster.write_port + offset
        assert master["healthy"] and by_name["haproxy-postgres"]["healthy"], report
        # Its write port reaches its own master; the first platform's is untouched.
        with cluster.app_connect(cluster.write_port + offset) as conn:
            row = conn.execute("SELECT current_setting('port')").fetchone()
        assert row == (str(cluster.master + offset),)
        assert cluster.cli_json("status")["healthy"] is True
    finally:
        result = lifecycle.stop(second, layout)
    assert all(not alive(pid) for pid in result.stopped_pids)
    shutil.rmtree(workdir, ignore_errors=True)
