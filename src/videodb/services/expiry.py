"""The upload service forgets old idempotency keys: a periodic prune in the background."""

from __future__ import annotations

import logging

from videodb.db import DataLayer
from videodb.db.layer import DB_ERRORS
from videodb.services.periodic import Periodic

log = logging.getLogger(__name__)


class IdempotencyExpiry:
    """Every `interval_s`, delete the keys older than `ttl_s` (a failed prune is retried)."""

    def __init__(self, layer: DataLayer, ttl_s: float, interval_s: float | None = None) -> None:
        self.layer = layer
        self.ttl_s = ttl_s
        every = interval_s if interval_s is not None else min(3600.0, ttl_s / 4)
        self._pruner = Periodic(self.prune, every, at_start=True, at_stop=False)

    def prune(self) -> int:
        try:
            return self.layer.prune_idempotency(self.ttl_s)
        except DB_ERRORS as exc:  # a failover or a stopped cluster: next time
            log.warning("could not forget old idempotency keys (retried later): %s", exc)
            return 0

    async def start(self) -> None:
        await self._pruner.start()

    async def stop(self) -> None:
        await self._pruner.stop()
