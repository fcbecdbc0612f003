"""For every test: leaks are collected right after the test that made them. And `--slow`.

Warnings are errors (pyproject.toml), so an unclosed connection, socket or file fails a test; the
garbage collector runs after each test, so that it is this test that fails and not whichever one
the collector happens to run in later.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def collect_leaks() -> Iterator[None]:
    yield
    gc.collect()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--slow",
        action="store_true",
        help="also run the tests marked slow (the default run covers every fault without them)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with './scripts/platform.sh test --slow'")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
