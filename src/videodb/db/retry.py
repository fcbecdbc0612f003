"""Jittered exponential backoff with a deadline (for reads across a failover)."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    base_s: float = 0.05
    cap_s: float = 1.0
    deadline_s: float = 30.0

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """'Full jitter': attempt n waits uniform(0, min(cap, base * 2**n)), until the deadline."""
        rng = rng or random.Random()
        end = time.monotonic() + self.deadline_s
        attempt = 0
        while True:
            remaining = end - time.monotonic()
            if remaining <= 0:
                return
            yield min(
                remaining, rng.uniform(0, min(self.cap_s, self.base_s * 2 ** min(attempt, 30)))
            )
            attempt += 1
