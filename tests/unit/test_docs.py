"""README.md and docs/ stand on their own: nothing points outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_no_document_depends_on_a_file_outside_the_repository() -> None:
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for outside in ("spec/postgresql-replication-guide.md", "shared folder", "../shared"):
            assert outside not in text, f"{doc.name} refers to {outside!r}"


def test_every_relative_link_resolves() -> None:
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", doc.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"


def test_the_readme_shows_the_quickstart_and_the_port_offset() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "<!-- quickstart -->" in text and "curl" in text and "-r 0-1023" in text
    assert "--port-offset" in text
    assert "## What it builds" in text and "5435" in text and "5436" in text
