"""`start` refuses bad input before starting anything, with one clear line per problem."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import CLI, make_workdir, write_sandbox_config

pytestmark = pytest.mark.integration


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = make_workdir("videodb-pre-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=60, check=False)


def test_port_in_use_stops_start_before_anything_runs(workdir: Path) -> None:
    config = write_sandbox_config(workdir)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run("--config", str(config), "--set", f"haproxy.write_port={port}", "start")
    assert result.returncode == 2
    assert f"port {port} (haproxy write) is in use by pid" in result.stderr
    assert not (workdir / "state" / "run").exists()  # nothing was started or written


def test_missing_binary_is_named_with_its_package(workdir: Path) -> None:
    config = write_sandbox_config(workdir)
    result = run("--config", str(config), "--set", "haproxy.binary=haproxy-missing", "start")
    assert result.returncode == 2
    assert "haproxy-missing not found; install it with 'apt-get install -y haproxy'" in (
        " ".join(result.stderr.split())
    )


def test_malformed_config_names_file_key_and_value(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[haproxy]\nread_port = "five"\n')
    result = run("--config", str(config), "status")
    text = " ".join(result.stderr.split())
    assert result.returncode == 2
    assert str(config) in text and "haproxy.read_port" in text and "'five'" in text


def test_commands_on_a_stopped_platform_say_so(workdir: Path) -> None:
    config = write_sandbox_config(workdir)
    status = run("--config", str(config), "status")
    assert status.returncode == 3
    assert "nothing was ever started in state directory" in " ".join(status.stdout.split())
    assert len(status.stdout.strip().splitlines()) <= 2  # one sentence, wrapped at most once
    for command in ("replication-status", "haproxy-stats", "shell-video", "wait-sync"):
        refused = run("--config", str(config), command)
        text = " ".join(refused.stderr.split())
        assert refused.returncode == 3 and "is not running; start it with" in text, command


def test_a_tool_that_hangs_is_stopped_and_named_in_one_line(workdir: Path) -> None:
    """HAProxy's config check never returns: start says so after its deadline, no traceback."""
    hanging = workdir / "haproxy-that-hangs"
    hanging.write_text("#!/bin/sh\nexec sleep 300\n")
    hanging.chmod(0o755)
    config = write_sandbox_config(workdir)
    result = run("--config", str(config), "--set", f"haproxy.binary={hanging}", "start", "video")
    text = " ".join(result.stderr.split())
    assert result.returncode == 1, result
    assert "haproxy -c did not finish in 30 s and was stopped" in text
    assert "Traceback" not in result.stderr
    assert not (workdir / "state" / "run" / "supervisord.pid").exists()  # nothing started
