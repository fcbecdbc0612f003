"""install-service: a systemd unit that starts this host's part at boot, checked with
systemd-analyze verify (these machines have no running systemd to start it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).parent / "videodb")


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_the_unit_starts_and_stops_this_hosts_part_with_the_options_given(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDEODB")}
    env["VIDEODB_HOME"] = str(ROOT)
    units = tmp_path / "units"
    state = tmp_path / "state"
    done = subprocess.run(
        [
            CLI,
            "--port-offset",
            "300",
            "--state-dir",
            str(state),
            "install-service",
            "--unit-dir",
            str(units),
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done
    unit = units / "videodb-local-300.service"
    text = unit.read_text()
    start = f"{ROOT}/scripts/platform.sh --set port_offset=300 --state-dir {state} start video"
    assert f"ExecStart={start}" in text
    assert "ExecStop=" in text and text.rstrip().endswith("WantedBy=multi-user.target")
    checked = verify(unit)
    assert checked.returncode == 0, checked.stderr
    # The check is real: a unit naming a script that is not there is refused.
    broken = units / "broken.service"
    broken.write_text(text.replace(str(ROOT / "scripts"), "/nonexistent"))
    refused = verify(broken)
    assert refused.returncode != 0 and "not executable" in refused.stderr
