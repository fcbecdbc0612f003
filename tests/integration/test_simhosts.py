"""The simulated hosts clean up after a test run that was killed (SIGKILL runs no teardown)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.integration.simhosts import NETNS_DIR, netns_available, owner_pid, sweep_stale
from videodb.cluster.supervisor import pid_alive
from videodb.waiting import wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(netns_available() is not None, reason=str(netns_available())),
]


def test_namespaces_of_a_killed_run_are_removed_with_what_runs_in_them() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs: the "killed test run"
    stale = f"vdb0a0ap{dead.pid}-db1"
    ours = f"vdb0b0bp{os.getpid()}-db1"
    assert owner_pid(stale) == dead.pid and owner_pid("vdb87f85b-db1") is None
    sleeper = None
    try:
        for name in (stale, ours):
            subprocess.run(["ip", "netns", "add", name], check=True)
        sleeper = subprocess.Popen(["ip", "netns", "exec", stale, "sleep", "60"])

        def inside() -> bool:
            listed = subprocess.run(
                ["ip", "netns", "pids", stale], capture_output=True, text=True, check=True
            )
            return str(sleeper.pid) in listed.stdout.split()

        # `ip netns exec` enters the namespace a moment after it starts (a sweep before that
        # found nothing to kill: the CI failure of this test once).
        wait_for(inside, timeout=10, what="the sleeper inside the stale namespace")
        removed = sweep_stale(pid_alive)
        assert removed == [stale]
        assert not (NETNS_DIR / stale).exists() and (NETNS_DIR / ours).exists()
        assert sleeper.wait(timeout=10) != 0  # killed with its namespace
    finally:
        if sleeper is not None and sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()
        for name in (stale, ours):
            if Path(NETNS_DIR / name).exists():
                subprocess.run(["ip", "netns", "del", name], check=False)
