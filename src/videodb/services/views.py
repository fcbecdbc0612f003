"""View counts, batched: requests add to an in-memory tally; one transaction writes it every
`interval` seconds. A burst of range requests costs one UPDATE, not one per request."""

from __future__ import annotations

import logging
import threading
import uuid
from collections import Counter as Tally

from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy import text

from videodb.db import DataLayer
from videodb.services.periodic import Periodic

log = logging.getLogger("videodb.services.views")

FLUSH_SQL = text(
    "UPDATE videos AS v SET views = v.views + t.n "
    "FROM unnest(CAST(:ids AS uuid[]), CAST(:ns AS bigint[])) AS t(id, n) WHERE v.id = t.id"
)


class ViewCounter:
    def __init__(self, layer: DataLayer, interval_s: float, registry: CollectorRegistry) -> None:
        self.layer = layer
        self.interval_s = interval_s
        self._pending: Tally[uuid.UUID] = Tally()
        self._lock = threading.Lock()
        self._writer = Periodic(self.flush, interval_s, at_start=False, at_stop=True)
        self.counted = Counter("videodb_views_counted_total", "Views counted", registry=registry)
        self.flushes = Counter(
            "videodb_view_flushes_total", "Transactions that wrote view counts", registry=registry
        )
        self.flush_errors = Counter(
            "videodb_view_flush_errors_total", "View writes that failed (kept)", registry=registry
        )
        self.pending_gauge = Gauge(
            "videodb_views_pending", "Views counted but not yet written", registry=registry
        )

    def count(self, video_id: uuid.UUID) -> None:
        with self._lock:
            self._pending[video_id] += 1
        self.counted.inc()
        self.pending_gauge.inc()

    def flush(self) -> int:
        """Write the tally in one transaction; on failure keep it for the next flush."""
        with self._lock:
            batch, self._pending = self._pending, Tally()
        if not batch:
            return 0
        ids = list(batch)
        try:
            with self.layer.writer() as unit:
                unit.session.execute(
                    FLUSH_SQL, {"ids": [str(i) for i in ids], "ns": [batch[i] for i in ids]}
                )
        except Exception as exc:
            # An in-doubt commit may have written them: counting twice is the lesser harm for a
            # view counter than dropping them (documented in the operator guide).
            with self._lock:
                self._pending.update(batch)
            self.flush_errors.inc()
            log.warning("writing %d view counts failed, kept for later: %s", len(ids), exc)
            return 0
        total = sum(batch.values())
        self.flushes.inc()
        self.pending_gauge.dec(total)
        return total

    async def start(self) -> None:
        await self._writer.start()

    async def stop(self) -> None:
        """Stop writing in the background, and write what is left."""
        await self._writer.stop()
