"""The launcher shortens the poll of the Patroni release installed here, and only that.

Each check runs in a child interpreter: importing Patroni sets the process's umask to 0077 (its
patroni.file_perm), which the test process must not inherit (the CLIs it starts would create
state directories PostgreSQL's OS user cannot enter).
"""

from __future__ import annotations

import subprocess
import sys


def python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_the_installed_patroni_has_the_poll_and_the_launcher_shortens_it() -> None:
    code = (
        "import patroni.postgresql as p\n"
        "from videodb.cluster import patroni_launch\n"
        "print(p.STOP_POLLING_INTERVAL)\n"
        "patroni_launch.tune(0.25)\n"
        "print(p.STOP_POLLING_INTERVAL, patroni_launch.STOP_POLL_S)\n"
    )
    result = python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "0.25", "0.25"]  # Patroni's own value, then ours


def test_a_patroni_without_the_poll_is_refused_by_name() -> None:
    code = (
        "import patroni.postgresql as p\n"
        "from videodb.cluster import patroni_launch\n"
        "del p.STOP_POLLING_INTERVAL\n"
        "patroni_launch.tune()\n"
    )
    result = python(code)
    assert result.returncode == 1
    assert "STOP_POLLING_INTERVAL is missing from this Patroni release" in result.stderr
