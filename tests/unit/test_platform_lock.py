"""One mutating command at a time per state directory: the second is refused, holder named."""

from __future__ import annotations

import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from videodb.platform_lock import PlatformBusyError, lock_path, platform_lock

HOLD = """
import sys, time
from pathlib import Path
from videodb.platform_lock import platform_lock
with platform_lock(Path(sys.argv[1]), command="platform.sh restore 123-base --force"):
    print("held", flush=True)
    time.sleep(60)
"""


def hold_in_another_process(state: Path) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(state)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


def end(child: subprocess.Popen[str]) -> None:
    child.kill()
    child.wait()
    if child.stdout is not None:
        child.stdout.close()


def test_a_second_command_is_refused_naming_the_holder(tmp_path: Path) -> None:
    child = hold_in_another_process(tmp_path)
    try:
        with (
            pytest.raises(PlatformBusyError) as info,
            platform_lock(tmp_path, command="platform.sh start video"),
        ):
            pass
        message = str(info.value)
        assert f"pid {child.pid} (platform.sh restore 123-base --force, since 20" in message
        assert str(lock_path(tmp_path)) in message and "wait for it to finish" in message
        assert info.value.exit_code == 4
    finally:
        end(child)


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    child = hold_in_another_process(tmp_path)
    end(child)  # SIGKILL: no chance to unlock
    deadline = time.monotonic() + 5
    while True:  # the kernel drops the flock with the process
        try:
            with platform_lock(tmp_path, command="platform.sh stop"):
                break
        except PlatformBusyError:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_the_lock_is_reentrant_in_one_process(tmp_path: Path) -> None:
    with platform_lock(tmp_path, command="platform.sh restart"):
        with platform_lock(tmp_path):  # restart runs stop, then start
            pass
        with platform_lock(tmp_path):
            pass
    end(hold_in_another_process(tmp_path))  # and released afterwards


def test_a_secret_given_as_a_flag_is_never_recorded() -> None:
    from videodb.cli_log import shown_command

    argv = [
        "videodb",
        "--set",
        "database.app_password=hunter2",
        "--set=a.b_password=x2",
        "--set",
        "haproxy.maxconn=500",
        "start",
        "video",
    ]
    shown = shown_command(argv)
    assert "hunter2" not in shown and "x2" not in shown
    assert shown == (
        "platform.sh --set database.app_password=******** --set=a.b_password=******** "
        "--set haproxy.maxconn=500 start video"
    )


def test_the_first_command_makes_the_state_directory_enterable_under_umask_0077(
    tmp_path: Path,
) -> None:
    """An operator's umask 0077 must not make the state directory one PostgreSQL's OS user
    cannot enter (start would refuse it). In a child process: the umask is process-wide."""
    state = tmp_path / "srv" / "state"
    code = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from videodb.cli_log import log_to\n"
        "os.umask(0o077)\n"
        "assert log_to(Path(sys.argv[1]) / 'logs') is not None\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(state)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    for directory in (tmp_path / "srv", state, state / "logs"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o755, directory
