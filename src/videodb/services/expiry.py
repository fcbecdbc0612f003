"""The upload service forgets old idempotency keys: a periodic prune in the background."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.concurrency import run_in_threadpool

from videodb.db import DataLayer
from videodb.db.layer import DB_ERRORS

log = logging.getLogger(__name__)


class IdempotencyExpiry:
    """Every `interval_s`, delete the keys older than `ttl_s` (a failed prune is retried)."""

    def __init__(self, layer: DataLayer, ttl_s: float, interval_s: float | None = None) -> None:
        self.layer = layer
        self.ttl_s = ttl_s
        self.interval_s = interval_s if interval_s is not None else min(3600.0, ttl_s / 4)
        self._task: asyncio.Task[None] | None = None

    def prune(self) -> int:
        try:
            return self.layer.prune_idempotency(self.ttl_s)
        except DB_ERRORS as exc:  # a failover or a stopped cluster: next time
            log.warning("could not forget old idempotency keys (retried later): %s", exc)
            return 0

    async def _loop(self) -> None:
        while True:
            await run_in_threadpool(self.prune)
            await asyncio.sleep(self.interval_s)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
