"""The command line as a user meets it: --help, choices, refusals, config, --port-offset.

Each runs the installed `videodb` entry point (what platform.sh runs); none starts a server.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import get_args

import pytest

from videodb.cli import FaultChoice
from videodb.cluster.drill import FAULTS
from videodb.sandbox import make_workdir

CLI = str(Path(sys.executable).parent / "videodb")
HOME = Path(__file__).resolve().parents[2]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("VIDEODB", "DB_"))}
    base["VIDEODB_HOME"] = str(HOME)
    return subprocess.run(
        [CLI, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**base, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def test_help_reads_like_the_tool_it_is() -> None:
    top = run("--help")
    assert top.returncode == 0
    assert top.stdout.startswith("Usage: platform.sh [OPTIONS] COMMAND")
    assert "<bool>" not in top.stdout and "<str>" not in top.stdout
    assert "Examples:" in top.stdout and "--port-offset N" in top.stdout
    for command, choices in (
        (
            "start",
            ("video|apps", "automatic|manual", "async|sync|sync-strict", "fast|default|safe"),
        ),
        ("stop", ("all|video|apps",)),
        ("failover-test", ("kill-postgres|kill-node|freeze|switchover",)),
        ("maintenance", ("on|off",)),
    ):
        shown = run(command, "--help").stdout
        assert shown.startswith(f"Usage: platform.sh {command}"), shown
        assert "<bool>" not in shown and "<str>" not in shown, shown
        for choice in choices:
            assert choice in shown, (command, choice, shown)
    assert "Examples:" in run("start", "--help").stdout


def test_the_fault_choices_are_the_drills_faults() -> None:
    assert get_args(FaultChoice) == FAULTS


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("failover-test", "--fault", "nosuch"), "nosuch"),
        (("start", "--replication", "often"), "often"),
        (("maintenance", "sideways"), "sideways"),
    ],
)
def test_a_bad_choice_is_refused_before_anything_runs(args: tuple[str, ...], named: str) -> None:
    result = run(*args)
    assert result.returncode == 2
    assert named in result.stderr and "is not one of" in result.stderr
    assert "run 1 of" not in result.stdout + result.stderr  # nothing started before refusing


def test_a_question_with_no_terminal_names_force(tmp_path: Path) -> None:
    state = tmp_path / "state"
    result = run("--state-dir", str(state), "destroy")
    assert result.returncode == 2
    assert "no terminal to confirm on; pass --force" in " ".join(result.stderr.split())
    assert "Aborted" not in result.stdout + result.stderr


def test_config_prints_annotated_toml_that_is_a_valid_config(tmp_path: Path) -> None:
    shown = run("--set", "haproxy.maxconn=500", "config", env={"DB_PASSWORD": "s3cret-pw"})
    assert shown.returncode == 0, shown.stderr
    assert "s3cret-pw" not in shown.stdout
    lines = shown.stdout.splitlines()
    assert any(
        ln.startswith("maxconn = 500") and ln.endswith("# flag --set haproxy.maxconn")
        for ln in lines
    ), shown.stdout
    assert any("app_password is redacted" in ln and "environment DB_PASSWORD" in ln for ln in lines)
    assert any(ln.startswith('binary = "etcd"') and ln.endswith("# default") for ln in lines)
    parsed = tomllib.loads(shown.stdout)
    assert parsed["haproxy"]["maxconn"] == 500 and len(parsed["nodes"]) == 2
    # Saved and given back as --config, it yields the same settings.
    saved = tmp_path / "effective.toml"
    saved.write_text(shown.stdout)
    again = json.loads(run("--config", str(saved), "config", "--json").stdout)["settings"]
    first = json.loads(run("--set", "haproxy.maxconn=500", "config", "--json").stdout)["settings"]
    assert again == first


def test_port_offset_moves_every_port_and_the_state_directory(tmp_path: Path) -> None:
    plain = json.loads(run("config", "--json").stdout)["settings"]
    moved_doc = json.loads(run("--port-offset", "100", "config", "--json").stdout)
    moved = moved_doc["settings"]
    assert moved["haproxy"]["write_port"] == plain["haproxy"]["write_port"] + 100 == 5535
    assert [n["port"] for n in moved["nodes"]] == [n["port"] + 100 for n in plain["nodes"]]
    for section in ("etcd", "haproxy", "apps"):
        for key, value in plain[section].items():
            if key.endswith("_port"):
                assert moved[section][key] == value + 100, (section, key)
    assert moved["state_dir"] == str(HOME / ".state-100")
    assert moved_doc["overrides"]["port_offset"] == "flag --port-offset"
    # The environment does the same; the printed TOML does not add the offset a second time.
    by_env = run("config", "--json", env={"VIDEODB_PORT_OFFSET": "100"})
    assert json.loads(by_env.stdout)["settings"] == moved
    # A port set by a flag or the environment (a string until validated) moves too.
    for how, env in (
        (("--set", "haproxy.write_port=6435"), {}),
        ((), {"VIDEODB__HAPROXY__WRITE_PORT": "6435"}),
    ):
        shown = run("--port-offset", "100", *how, "config", "--json", env=env)
        assert json.loads(shown.stdout)["settings"]["haproxy"]["write_port"] == 6535, how
    saved = tmp_path / "moved.toml"
    saved.write_text(run("--port-offset", "100", "config").stdout)
    reloaded = json.loads(run("--config", str(saved), "config", "--json").stdout)["settings"]
    assert reloaded["haproxy"]["write_port"] == 5535


def test_a_port_offset_past_the_last_port_is_refused() -> None:
    result = run("--port-offset", "60000", "config")
    assert result.returncode == 2
    assert "flag --port-offset: port_offset 60000 moves" in " ".join(result.stderr.split())


def assert_one_clear_line(result: subprocess.CompletedProcess[str], *, rc: int) -> str:
    """A refusal: the exit code, no traceback, and the message in one line (two with the log)."""
    text = result.stdout + result.stderr
    assert result.returncode == rc, text
    assert "Traceback" not in text and 'File "' not in text, text
    lines = [
        ln for ln in result.stderr.splitlines() if ln.strip() and not ln[:7].strip()[:1].isdigit()
    ]
    assert 1 <= len(lines) <= 2, result.stderr
    return " ".join(result.stderr.split())


def test_a_key_set_both_whole_and_in_parts_is_one_clear_line() -> None:
    result = run("--set", "nodes.0=x", "--set", "nodes.0.name=y", "config")
    text = assert_one_clear_line(result, rc=2)
    assert "nodes.0 holds the value 'x', not a table of keys" in text


def test_an_unexpected_error_is_one_line_and_a_logged_traceback(tmp_path: Path) -> None:
    reachable = make_workdir("videodb-cli-")  # PostgreSQL's OS user passes the preflight there
    not_a_dir = reachable / "a-file"
    not_a_dir.write_text("")
    not_a_dir.chmod(0o755)  # passes the reachability check, then cannot hold a directory
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    args = ("--port-offset", "3000", "--state-dir", str(not_a_dir / "state"), "start", "video")
    result = run(*args, env=env)
    text = assert_one_clear_line(result, rc=1)
    assert f"Not a directory: {not_a_dir / 'state'}" in text
    log = tmp_path / "cache" / "videodb" / "errors.log"
    assert f"the traceback is in {log}" in text and "--debug" in text
    assert "Traceback" in log.read_text() and "NotADirectoryError" in log.read_text()
    shown = run("--debug", *args, env=env)
    assert shown.returncode == 1 and "NotADirectoryError" in shown.stderr  # --debug shows it
    shutil.rmtree(reachable)
