"""The packages form layers: no package imports one that imports it back.

Nodes are the subpackages of videodb (cluster, backups, db, services) and each top-level module
(config, layout, backup_repo, cli...). Every import counts, including those inside functions.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "videodb"


def unit_of(module: str) -> str | None:
    """videodb.cluster.ha -> videodb.cluster; videodb.config -> videodb.config."""
    parts = module.split(".")
    if parts[0] != "videodb" or len(parts) < 2 or parts[1] == "__init__":
        return None
    name = parts[1]
    if not (SRC / name).is_dir() and not (SRC / f"{name}.py").exists():
        return None  # a name, not a module: from videodb import __version__
    return f"videodb.{name}"


def imports(path: Path) -> Iterator[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            for alias in node.names:  # from videodb import pgenv -> videodb.pgenv
                yield f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        here = unit_of(".".join(rel.parts))
        if here is None:
            continue
        for target in imports(path):
            there = unit_of(target)
            if there and there != here:
                edges.setdefault(here, set()).add(there)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(edges):
        if v not in index:
            visit(v)
    return found


def test_no_package_imports_one_that_imports_it_back() -> None:
    edges = graph()
    assert "videodb.cluster" in edges and "videodb.backups" in edges  # the graph is real
    assert cycles(edges) == [], {k: sorted(v) for k, v in edges.items()}


def test_the_backup_repository_and_wal_archive_are_leaves() -> None:
    edges = graph()
    for leaf in ("videodb.backup_repo", "videodb.wal_archive"):
        packages = {t for t in edges.get(leaf, set()) if (SRC / t.split(".")[1]).is_dir()}
        assert packages == set(), f"{leaf} imports {packages}"


def test_the_cycle_check_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
