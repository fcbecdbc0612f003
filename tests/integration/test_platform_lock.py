"""Two mutating commands on one state directory: the second is refused, naming the first, and
nothing of it is half-written."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess

import pytest

from tests.integration.harness import CLI, RunningCluster, operator_env
from videodb.platform_lock import lock_path, platform_lock
from videodb.waiting import wait_for

pytestmark = pytest.mark.integration


def fingerprint(cluster: RunningCluster) -> dict[str, str]:
    """Every generated file and the node list, by content."""
    files = [
        *(f for f in cluster.layout.conf.iterdir() if f.is_file()),
        cluster.layout.root / "nodes.json",
    ]
    return {
        str(f): hashlib.sha256(f.read_bytes()).hexdigest() if f.exists() else "absent"
        for f in files
    }


@pytest.mark.parametrize(
    "command",
    [
        ("add-replica", "postgres-video-replica-9"),
        ("start", "video", "--replication", "sync"),
        ("backup-video",),
        ("stop",),
        ("maintenance", "on"),
    ],
)
def test_a_command_is_refused_while_another_holds_the_platform(
    cluster: RunningCluster, command: tuple[str, ...]
) -> None:
    before = fingerprint(cluster)
    with platform_lock(cluster.layout.root, command="platform.sh restore 42-base --force"):
        refused = cluster.cli(*command)
    text = " ".join(refused.stderr.split())
    assert refused.rc == 4, refused
    assert f"pid {os.getpid()} (platform.sh restore 42-base --force, since" in text
    assert "wait for it to finish" in text and "Traceback" not in refused.stderr
    assert fingerprint(cluster) == before
    assert cluster.cli_json("status")["healthy"] is True  # nothing was stopped or changed


def test_two_clis_at_once_the_second_is_refused(cluster: RunningCluster) -> None:
    """A real add-replica holds the lock while it clones; a remove-replica meanwhile is refused."""
    name = "postgres-video-replica-8"
    first = subprocess.Popen(
        [CLI, "--config", str(cluster.config_file), "add-replica", name, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=operator_env(),
    )
    try:

        def held_by_first() -> bool:
            try:
                return bool(
                    json.loads(lock_path(cluster.layout.root).read_text())["pid"] == first.pid
                )
            except (OSError, ValueError, KeyError):
                return False

        wait_for(held_by_first, timeout=30, what="add-replica holding the lock", interval=0.02)
        second = cluster.cli("remove-replica", name)
        text = " ".join(second.stderr.split())
        _, errors = first.communicate(timeout=240)
        assert first.returncode == 0, errors
        assert second.rc == 4, second
        assert f"pid {first.pid} (platform.sh" in text and f"add-replica {name}" in text
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    # The first finished whole: its replica streams and is recorded.
    assert name in {n["name"] for n in json.loads((cluster.layout.root / "nodes.json").read_text())}
    removed = cluster.cli("remove-replica", name)
    assert removed.rc == 0, removed


def test_a_failed_add_replica_leaves_nothing_behind(cluster: RunningCluster) -> None:
    """A replica that does not stream in time is removed again: no node, program or data."""

    # supervisord.conf is rewritten (its autostart flags are a start's business), so compare the
    # node list and the configs that name nodes.
    def nodes_and_routing() -> dict[str, str]:
        return {k: v for k, v in fingerprint(cluster).items() if not k.endswith("supervisord.conf")}

    before = nodes_and_routing()
    name = "postgres-video-replica-7"
    failed = cluster.cli("add-replica", name, "--timeout", "0.05")  # far below a clone (~1 s)
    assert failed.rc == 1 and "streaming not reached" in " ".join(failed.stderr.split()), failed
    assert "removing it again" in failed.stderr
    assert nodes_and_routing() == before  # configs and nodes.json as they were
    assert name not in {p.name for p in cluster.supervisor().programs()}
    assert not cluster.layout.node_data(name).exists()
    assert name not in {s["name"] for s in cluster.cli_json("status")["services"]}
