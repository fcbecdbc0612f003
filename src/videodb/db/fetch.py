"""One read-only statement straight through the driver, with read()'s guarantees.

`DataLayer.read(fn)` hands `fn` an ORM Session: SQLAlchemy's statement machinery, the Session and
its transaction bookkeeping cost about as much as the query itself on a local network (read()
measured 2x raw psycopg over the same hop). `DataLayer.fetch(sql, params)` is for the hot paths
that need one plain statement: it checks a pooled connection out of the same reader pool and runs
the statement on the psycopg connection itself. The rules are read()'s: the SQL is checked
read-only before it leaves; a token or staleness bound is checked on the node in the same round
trip (a pipeline: the position query, then the statement, one sync); a node behind is waited on
(token_wait_ms) and asked again, else the statement runs on the writer in a read-only
transaction; errors are classified and retried by DataLayer.fetch as read() retries them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import RowFactory, tuple_row
from sqlalchemy import Engine
from sqlalchemy.pool import PoolProxiedConnection

from videodb.db.errors import classify
from videodb.db.position import POSITION_QUERY, SEEN, Position, ask_position
from videodb.db.readonly import check_read_only
from videodb.db.token import ConsistencyToken

if TYPE_CHECKING:
    from videodb.db.layer import DataLayer

Params = Sequence[Any] | Mapping[str, Any] | None


def fetch_once(
    layer: DataLayer,
    sql: str,
    params: Params,
    token: ConsistencyToken | None,
    max_lag: float | None,
    row_factory: RowFactory[Any] = tuple_row,
) -> list[Any]:
    """One attempt: rows from a replica that may serve them, else from the writer."""
    check_read_only(sql)
    served_by = "replica"
    rows: list[Any] | None = None
    with _checked_out(layer.reader_engine) as (driver, info):
        cached: Position | None = info.get(SEEN)
        checks = layer.metrics.position_checks
        if token is None and max_lag is None:
            if cached is not None and not cached.in_recovery:
                served_by = "primary"
            rows = _run(driver, sql, params, row_factory)
        elif max_lag is None and token is not None and cached is not None and cached.has(token):
            served_by = "replica" if cached.in_recovery else "primary"
            checks.labels("cached").inc()
            layer.metrics.token_wait.observe(0.0)
            rows = _run(driver, sql, params, row_factory)
        else:
            with driver.pipeline():
                check = driver.execute(POSITION_QUERY)
                cursor = driver.cursor(row_factory=row_factory)
                cursor.execute(sql, params)
            row = check.fetchone()
            assert row is not None
            position = Position.from_row(row)
            info[SEEN] = position
            served_by = "replica" if position.in_recovery else "primary"
            if position.serves(token, max_lag):
                checks.labels("pipelined").inc()
                if token is not None:
                    layer.metrics.token_wait.observe(0.0)
                rows = cursor.fetchall()
            else:
                # Behind: those rows are dropped. Wait on this node, read again there, else
                # the writer (below, once this connection is back in its pool).
                checks.labels("behind").inc()
                usable, waited = layer.usable(
                    lambda: ask_position(driver, info), position, token, max_lag
                )
                if token is not None:
                    layer.metrics.token_wait.observe(waited)
                if usable:
                    rows = _run(driver, sql, params, row_factory)
    if rows is None:
        return _on_writer(layer, sql, params, row_factory)
    layer.metrics.reads.labels(served_by).inc()
    return rows


@contextmanager
def _checked_out(engine: Engine) -> Iterator[tuple[psycopg.Connection[Any], dict[str, Any]]]:
    """A pooled connection's psycopg connection and its pool record's info; back to the pool
    afterwards, retired first when an error says its node died or changed role (_retire)."""
    fairy = engine.raw_connection()
    try:
        driver: psycopg.Connection[Any] = fairy.driver_connection  # type: ignore[assignment]
        yield driver, fairy.info
    except psycopg.Error as exc:
        _retire(engine, fairy, exc)
        raise
    except BaseException:
        fairy.close()
        raise
    fairy.close()


def _run(
    driver: psycopg.Connection[Any], sql: str, params: Params, row_factory: RowFactory[Any]
) -> list[Any]:
    cursor = driver.cursor(row_factory=row_factory)
    cursor.execute(sql, params)
    return cursor.fetchall()


def _on_writer(
    layer: DataLayer, sql: str, params: Params, row_factory: RowFactory[Any]
) -> list[Any]:
    """The fallback: the statement in a read-only transaction on the writer."""
    with _checked_out(layer.writer_engine) as (driver, _):
        driver.execute("SET TRANSACTION READ ONLY")
        rows = _run(driver, sql, params, row_factory)
        driver.rollback()
    layer.metrics.reads.labels("writer").inc()
    return rows


def _retire(engine: Engine, fairy: PoolProxiedConnection, exc: psycopg.Error) -> None:
    """What DataLayer._retire_on_role_change does for statements run through SQLAlchemy: an
    error saying the node died or changed role retires every connection of the pool made before
    now (replaced at their next checkout; `Pool._invalidate` is what SQLAlchemy's own Connection
    calls for that); an error that broke only this connection discards it. Then it goes back."""
    driver = fairy.driver_connection
    if classify(exc).role_may_have_changed:
        engine.pool._invalidate(fairy, exc)
    elif driver is None or driver.closed or driver.broken:
        fairy.invalidate(exc)
    fairy.close()
