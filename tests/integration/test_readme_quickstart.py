"""The README's quickstart, run line for line against a real platform (web port substituted)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.integration.harness import RunningCluster

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"


def quickstart_lines() -> list[str]:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"<!-- quickstart -->\n(.*?)<!-- /quickstart -->", text, re.DOTALL)
    assert match, "README.md has no <!-- quickstart --> block"
    return [line.strip() for line in match.group(1).splitlines() if line.strip()]


def test_the_readme_quickstart_uploads_finds_and_streams(
    cluster: RunningCluster, tmp_path: Path
) -> None:
    lines = quickstart_lines()
    assert 4 <= len(lines) <= 5, lines  # five lines at most: a quickstart, not a tutorial
    web = cluster.app_url("web")
    script = "\n".join(line.replace("http://127.0.0.1:8080", web) for line in lines)
    assert web in script  # the block really talks to the page's port
    done = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:  # show what the upload answered
        answer = subprocess.run(
            ["curl", "-s", "-i", "-F", "file=@clip.mp4", "-F", "title=again", f"{web}/api/videos"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        raise AssertionError(f"{done.stdout}{done.stderr}\nupload answers:\n{answer.stdout}")
    found, streamed, video = done.stdout.splitlines()
    assert "My first clip" in found
    assert streamed == "206: 1024 bytes"
    assert json.loads(video)["title"] == "My first clip"
    clip = (tmp_path / "clip.mp4").read_bytes()
    assert (tmp_path / "first-kb.mp4").read_bytes() == clip[:1024]
