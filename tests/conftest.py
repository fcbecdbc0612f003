"""For every test: leaks are collected right after the test that made them.

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
