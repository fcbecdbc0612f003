"""Read-your-writes in one round trip: the position check sent with the read's first statement.

`DataLayer.read()` with a token the pooled connection has not seen its node reach (or with a
staleness bound) used to ask the node first (`videodb_position()`, one round trip) and then run
the read (a second). Here the check is queued in a psycopg pipeline just before the read's first
statement and both go out together: the node answers the check, then runs the read. In autocommit
each statement takes its snapshot when it starts, after the check finished, so a check that
passed means the read saw the token's commit. (A guard inside the read's own statement would not
do: its snapshot is taken before the function runs.) When the check fails the read's rows are
thrown away and `read()` takes the slow path: wait for replay, or the writer.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection

from videodb.db.position import POSITION_QUERY, SEEN, Position
from videodb.db.token import ConsistencyToken

PENDING = "videodb_pending_check"  # on a pooled connection's .info while a read is under way


class NotCaughtUp(Exception):
    """The node the read ran on had not replayed the token (or lags too far): read again."""

    def __init__(self, position: Position) -> None:
        super().__init__(f"node at {position}")
        self.position = position


@dataclass
class PendingCheck:
    token: ConsistencyToken | None
    max_lag_s: float | None
    session_info: dict[str, Any]  # served_by is written there once the node has answered
    pipeline: Any = None
    cursor: Any = None
    done: bool = field(default=False)
    passed: bool = field(default=False)  # the node had the token (and was within the bound)


def arm(conn: Connection, check: PendingCheck | None) -> None:
    """Set (or with None, clear) the check for the read about to run on `conn`."""
    if check is None:
        conn.info.pop(PENDING, None)
    else:
        conn.info[PENDING] = check


def begin(conn: Connection, *_: Any) -> None:
    """before_cursor_execute: queue the check ahead of the first statement."""
    check: PendingCheck | None = conn.info.get(PENDING)
    if check is None or check.done or check.pipeline is not None:
        return
    driver = conn.connection.driver_connection
    assert driver is not None
    check.pipeline = driver.pipeline()
    check.pipeline.__enter__()
    check.cursor = driver.cursor()
    check.cursor.execute(POSITION_QUERY)


def end(conn: Connection, *_: Any) -> None:
    """after_cursor_execute: one sync brings both answers; a node behind raises NotCaughtUp."""
    check: PendingCheck | None = conn.info.get(PENDING)
    if check is None or check.done or check.pipeline is None:
        return
    check.done = True
    check.pipeline.__exit__(None, None, None)
    row = check.cursor.fetchone()
    check.cursor.close()
    position = Position.from_row(row)
    conn.info[SEEN] = position
    check.session_info["served_by"] = "replica" if position.in_recovery else "primary"
    if not position.serves(check.token, check.max_lag_s):
        raise NotCaughtUp(position)
    check.passed = True


def disarm(conn: Connection, check: PendingCheck) -> None:
    """After the read: close a pipeline an error left open, forget the check. The connection
    may be invalid by now (a failover cut it): then its .info is gone with it."""
    if check.pipeline is not None and not check.done:
        with contextlib.suppress(Exception):
            check.pipeline.__exit__(None, None, None)
    check.done = True  # a stale reference can never start a check again
    with contextlib.suppress(Exception):
        conn.info.pop(PENDING, None)
