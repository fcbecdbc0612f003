"""Progress of long copies: "what: 412.3 of 1,024.0 MB (40 %)", at most every `interval_s`."""

from __future__ import annotations

import time
from collections.abc import Callable

Progress = Callable[[str], None]


def quiet(_: str) -> None:
    return None


def size(count: int) -> str:
    """Bytes for people: 812 B, 45.3 kB, 1,024.0 MB, 2.1 GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:,.1f} {unit}"
    return f"{count} B"


class Meter:
    def __init__(
        self, progress: Progress, what: str, total: int | None, interval_s: float = 1.0
    ) -> None:
        self.progress = progress
        self.what = what
        self.total = total
        self.interval_s = interval_s
        self.done = 0
        self._last: float | None = None  # the first update always prints
        self.began = time.monotonic()

    def update(self, done: int, total: int | None = None, *, force: bool = False) -> None:
        self.done = done
        if total is not None:
            self.total = total
        now = time.monotonic()
        if force or self._last is None or now - self._last >= self.interval_s:
            self._last = now
            self.progress(self.line())

    def add(self, count: int) -> None:
        self.update(self.done + count)

    def line(self) -> str:
        if self.total:
            share = min(100.0, 100 * self.done / self.total)
            return f"{self.what}: {size(self.done)} of {size(self.total)} ({share:.0f} %)"
        return f"{self.what}: {size(self.done)}"

    def finish(self) -> float:
        """Print the final line; returns the seconds taken."""
        self.update(self.done, force=True)
        return time.monotonic() - self.began
