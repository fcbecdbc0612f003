"""Where a node is in the WAL, and the pooled connection's memory of it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from videodb.db.token import ConsistencyToken, parse_lsn

POSITION_QUERY = "SELECT in_recovery, lsn::text, timeline, lag_s FROM public.videodb_position()"
SEEN = "videodb_position"  # the last Position read on a pooled connection (its .info)


@dataclass(frozen=True)
class Position:
    """Where a node is: a replica's replayed LSN, or a primary's current one."""

    in_recovery: bool
    lsn: int
    timeline: int
    lag_s: float

    def has(self, token: ConsistencyToken) -> bool:
        return self.timeline == token.timeline and self.lsn >= token.lsn

    def serves(self, token: ConsistencyToken | None, max_lag_s: float | None) -> bool:
        """A read with this token and staleness bound may run here as it is now."""
        if max_lag_s is not None and self.lag_s > max_lag_s:
            return False
        return token is None or self.has(token)

    @classmethod
    def from_row(cls, row: Any) -> Position:
        return cls(bool(row[0]), parse_lsn(str(row[1])), int(row[2]), float(row[3] or 0.0))


def ask_position(driver: Any, info: dict[str, Any]) -> Position:
    """One round trip on the psycopg connection `driver`; remembered in its pool record's
    `info` (SEEN), where the next read on that pooled connection finds it."""
    row = driver.execute(POSITION_QUERY).fetchone()
    assert row is not None
    position = Position.from_row(row)
    info[SEEN] = position
    return position


def read_position(conn: Connection) -> Position:
    """ask_position on a SQLAlchemy connection (straight through the driver: SQLAlchemy's
    statement machinery would cost more than the query on a local network)."""
    driver = conn.connection.driver_connection
    assert driver is not None
    return ask_position(driver, conn.info)
