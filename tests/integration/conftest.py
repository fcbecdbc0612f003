"""A real cluster (etcd, Patroni x2, HAProxy) on free ports in a temporary state directory.

It is stopped at the end by the pids it started; its directory (logs included) is kept when a test
failed, and its path printed.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.integration.harness import (
    RunningCluster,
    alive,
    make_workdir,
    started_pids,
    write_sandbox_config,
)
from videodb.cluster import lifecycle
from videodb.config import load_settings
from videodb.layout import StateLayout


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[RunningCluster]:
    workdir = make_workdir("videodb-it-")
    config_file = write_sandbox_config(workdir)
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
