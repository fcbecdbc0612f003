"""Deadline-based polling: the only way this project waits."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from videodb.errors import TimeoutExpired

T = TypeVar("T")


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    hint: str = "",
    interval: float = 0.2,
    on_wait: Callable[[float], None] | None = None,
) -> T:
    """Call `probe` until it returns something other than None/False, or the deadline passes."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        result = probe()
        if result is not None and result is not False:
            return result
        now = time.monotonic()
        if now >= deadline:
            message = f"{what} not reached after {timeout:.1f} s"
            raise TimeoutExpired(f"{message}; {hint}" if hint else message)
        if on_wait is not None:
            on_wait(now - start)
        time.sleep(min(interval, max(0.0, deadline - now)))
