"""Bytes that no video names are removed: at once after a delete, and by a periodic sweep.

Publishing a video's bytes and deleting them are ordered by the digest's advisory lock (taken in
the transaction that records or deletes the row), so the check "no row names these bytes" and the
removal happen with no upload of the same bytes in between. The sweep (in the upload service)
removes, once older than the grace period: staged uploads a crash left (and unfinished multipart
uploads), posters and video bytes that no row names (an upload that died between its bytes and
its row, a delete whose removal failed).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from videodb.db import DataLayer
from videodb.db.layer import DB_ERRORS
from videodb.services.models import Video
from videodb.services.periodic import Periodic
from videodb.services.storage import StoredObject, StoreUnavailableError, VideoStore

log = logging.getLogger(__name__)


def storage_lock_key(sha256: str) -> int:
    """The advisory lock that orders publishing and deleting the same bytes."""
    return int.from_bytes(bytes.fromhex(sha256[:16]), "big", signed=True)


def lock_digest(session: Session, sha256: str) -> None:
    session.execute(select(func.pg_advisory_xact_lock(storage_lock_key(sha256))))


def named_by_a_row(session: Session, sha256: str) -> bool:
    count = session.execute(
        select(func.count()).select_from(Video).where(Video.sha256 == sha256)
    ).scalar_one()
    return bool(count)


def drop_if_unreferenced(layer: DataLayer, store: VideoStore, sha256: str) -> bool:
    """Remove the bytes (and poster) of `sha256` if no row names them: under the digest's lock,
    in a transaction of its own. True when removed."""
    with layer.writer() as unit:
        lock_digest(unit.session, sha256)
        if named_by_a_row(unit.session, sha256):
            return False
        store.remove(sha256)
        unit.commit()
    return True


@dataclass
class SweepResult:
    removed: list[StoredObject] = field(default_factory=list)
    kept_young: int = 0


class Sweeper:
    """Every `interval_s`, removes what is older than `grace_s` and that no video names."""

    def __init__(
        self,
        layer: DataLayer,
        store: VideoStore,
        grace_s: float,
        interval_s: float | None = None,
    ) -> None:
        self.layer = layer
        self.store = store
        self.grace_s = grace_s
        every = interval_s if interval_s is not None else min(600.0, max(1.0, grace_s / 4))
        self._runner = Periodic(self.run, every, at_start=False, at_stop=False)

    def sweep(self, now: datetime | None = None) -> SweepResult:
        """One pass (raises when the store or the database fails)."""
        cutoff = (now or datetime.now(UTC)) - timedelta(seconds=self.grace_s)
        result = SweepResult()
        candidates: list[StoredObject] = []
        for item in self.store.listing():
            if item.modified > cutoff:
                result.kept_young += 1
            elif item.kind == "staged":
                self.store.remove_object(item)
                result.removed.append(item)
            else:
                candidates.append(item)
        if not candidates:
            return result
        digests = sorted({item.name for item in candidates})
        with self.layer.writer() as unit:
            named = set(
                unit.session.execute(
                    text("SELECT DISTINCT sha256 FROM videos WHERE sha256 = ANY(:d)"),
                    {"d": digests},
                ).scalars()
            )
            unit.commit()
        for item in candidates:
            if item.name in named:
                continue
            with self.layer.writer() as unit:
                lock_digest(unit.session, item.name)
                if not named_by_a_row(unit.session, item.name):
                    self.store.remove_object(item)
                    result.removed.append(item)
                unit.commit()
        return result

    def run(self) -> None:
        try:
            done = self.sweep()
        except (StoreUnavailableError, *DB_ERRORS) as exc:
            log.warning("sweep of the video store failed (tried again later): %s", exc)
            return
        if done.removed:
            log.info(
                "sweep removed %d unreferenced object(s): %s",
                len(done.removed),
                ", ".join(f"{i.kind} {i.name}" for i in done.removed[:10]),
            )

    async def start(self) -> None:
        await self._runner.start()

    async def stop(self) -> None:
        await self._runner.stop()
