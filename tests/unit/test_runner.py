"""Running external tools: a clean libpq environment, a deadline, an error that says why."""

from __future__ import annotations

import subprocess
import sys

import pytest

from videodb import pgenv
from videodb.runner import ToolError, deadline, run_tool, tail, tool_env

POISON = {"PGPASSWORD": "wrong", "PGSERVICE": "nosuch", "PGSSLMODE": "require", "PGDATA": "/x"}


def test_clean_env_drops_every_libpq_variable_and_keeps_the_rest() -> None:
    base = {**POISON, "PATH": "/usr/bin", "HOME": "/root", "PAGER": "less"}
    env = pgenv.clean_env(base, PGPASSFILE="/state/pgpass")
    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "PAGER": "less",
        "PGPASSFILE": "/state/pgpass",
    }


def test_scrub_empties_a_process_environment_of_libpq_variables() -> None:
    environ = {**POISON, "PATH": "/usr/bin"}
    removed = pgenv.scrub(environ)
    assert removed == sorted(POISON) and environ == {"PATH": "/usr/bin"}


def test_a_tool_sees_no_libpq_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in POISON.items():
        monkeypatch.setenv(name, value)
    assert "PGPASSWORD" not in tool_env()
    done = run_tool(
        [
            sys.executable,
            "-c",
            "import os; print(sorted(k for k in os.environ if k.startswith('PG')))",
        ],
        what="env probe",
        timeout=30,
        env={"PGPASSFILE": "/state/pgpass"},
    )
    assert done.stdout.strip() == "['PGPASSFILE']"


def test_a_failing_tool_is_named_with_its_exit_code_and_last_lines() -> None:
    script = "import sys; [print(f'line {i}', file=sys.stderr) for i in range(9)]; sys.exit(3)"
    with pytest.raises(ToolError, match=r"probe failed \(exit 3\): line 4; .*line 8") as info:
        run_tool([sys.executable, "-c", script], what="probe", timeout=30, hint="see the log")
    assert info.value.returncode == 3 and "see the log" in str(info.value)


def test_a_hung_tool_is_stopped_at_its_deadline() -> None:
    with pytest.raises(ToolError, match=r"sleeper did not finish in 0.5 s"):
        run_tool([sys.executable, "-c", "import time; time.sleep(30)"], what="sleeper", timeout=0.5)


def test_a_missing_tool_is_an_error_not_a_traceback() -> None:
    with pytest.raises(ToolError, match="could not be started"):
        run_tool(["/nonexistent/tool"], what="nothing", timeout=5)


def test_tail_keeps_the_last_lines() -> None:
    assert tail("a\n\nb\nc\n", lines=2) == "b; c (after 1 more lines)"
    assert tail("") == "no message"


def test_a_tool_read_as_it_runs_is_killed_at_its_deadline() -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; print('working', flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    with (
        process.stdout,
        pytest.raises(ToolError, match=r"pg_dump of x did not finish in 0.3 s and was stopped"),
        deadline(process, "pg_dump of x", 0.3),
    ):
        for _ in process.stdout:  # ends when the watchdog kills it
            pass
        process.wait()
    assert process.returncode == -9


def test_a_tool_that_finishes_in_time_is_left_alone() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    with deadline(process, "quick", 30) as expired:
        assert process.wait() == 0
    assert not expired()
