"""A blocking job run every `interval_s` seconds in the background of a service (in a worker
thread, so the event loop keeps serving), started and stopped with the app's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from fastapi.concurrency import run_in_threadpool


class Periodic:
    def __init__(
        self, job: Callable[[], object], interval_s: float, *, at_start: bool, at_stop: bool
    ) -> None:
        """`at_start`: run once as soon as started; `at_stop`: once more when stopped."""
        self.job = job
        self.interval_s = interval_s
        self.at_start = at_start
        self.at_stop = at_stop
        self._task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        if self.at_start:
            await run_in_threadpool(self.job)
        while True:
            await asyncio.sleep(self.interval_s)
            await run_in_threadpool(self.job)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.at_stop:
            await run_in_threadpool(self.job)
