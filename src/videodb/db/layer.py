"""The data layer every service uses: a writer and a reader, read-your-writes, safe retries."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from prometheus_client import CollectorRegistry
from psycopg.rows import RowFactory, tuple_row
from sqlalchemy import URL, Connection, Engine, ExceptionContext, create_engine, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import ORMExecuteState, Session

from videodb.db import pipelined as pipelined_check
from videodb.db.errors import (
    Failure,
    ReadOnlySessionError,
    WriteInDoubtError,
    classify,
)
from videodb.db.fetch import Params, fetch_once
from videodb.db.metrics import Metrics
from videodb.db.position import SEEN, Position, read_position
from videodb.db.readonly import check_read_only
from videodb.db.retry import Backoff
from videodb.db.settings import DataSourceSettings
from videodb.db.token import ConsistencyToken

T = TypeVar("T")

IDEMPOTENCY_TABLE = "videodb_idempotency"

log = logging.getLogger(__name__)
# Errors from SQLAlchemy, and from psycopg itself where the layer talks to the driver directly.
DB_ERRORS = (sa_exc.DBAPIError, psycopg.Error)


@dataclass
class WriteUnit:
    """One writer transaction. `commit()` (or leaving the block) commits and sets `token`."""

    session: Session
    _conn: Connection
    _on_commit: list[Callable[[ConsistencyToken], None]] = field(default_factory=list)
    token: ConsistencyToken | None = None
    committed: bool = False

    def commit(self) -> ConsistencyToken:
        if self.committed:
            assert self.token is not None
            return self.token
        self.session.commit()
        position = read_position(self._conn)
        self._conn.rollback()
        self.token = ConsistencyToken(position.timeline, position.lsn)
        self.committed = True
        for callback in self._on_commit:
            callback(self.token)
        return self.token

    def on_commit(self, callback: Callable[[ConsistencyToken], None]) -> None:
        self._on_commit.append(callback)


@dataclass
class ReadUnit:
    session: Session
    token_wait_s: float = 0.0

    @property
    def served_by(self) -> str:
        """replica, primary (the read port landed on it), writer (fallback); "pending" while a
        pipelined check waits for the read's first statement."""
        return str(self.session.info["served_by"])


class ReadOnlySession(Session):
    """A Session that refuses writes before they reach the database (see the events below)."""


@event.listens_for(ReadOnlySession, "do_orm_execute")
def _refuse_write_statements(state: ORMExecuteState) -> None:
    """ORM and Core writes are refused by kind. Text statements are not compiled here (that cost
    every read about 0.03 ms): the reader engine's before_cursor_execute guard checks the SQL
    they send, as it does every statement, before it leaves (DataLayer._reader_guard)."""
    if state.is_insert or state.is_update or state.is_delete:
        raise ReadOnlySessionError(
            "INSERT/UPDATE/DELETE through a reader session: reader sessions are read-only; "
            "use a writer session"
        )


@event.listens_for(ReadOnlySession, "before_flush")
def _refuse_flush(session: Session, *_: Any) -> None:
    if session.new or session.dirty or session.deleted:
        raise ReadOnlySessionError(
            "objects were added, changed or deleted in a reader session: reader sessions "
            "are read-only; use a writer session"
        )


PASSWORD_PASSES = 3


def connect_with_password_file(
    path: Path, dialect: Any, _record: Any, cargs: Any, cparams: dict[str, Any]
) -> Any:
    """Connect with the passwords in `path`, in order, moving on only when one is refused:
    during 'rotate password app' the file holds the new password and the old one. The role may
    change from the old to the new between two attempts (the new one refused, then the old one
    too): the file is read and tried again, a few passes at most."""
    for attempt in range(PASSWORD_PASSES):
        try:
            passwords = [p for p in path.read_text(encoding="utf-8").splitlines() if p]
        except OSError as exc:
            raise psycopg.OperationalError(
                f"the application password file {path} cannot be read ({exc.strerror})"
            ) from exc
        for index, password in enumerate(passwords):
            cparams["password"] = password
            try:
                return dialect.connect(*cargs, **cparams)
            except psycopg.OperationalError as exc:
                refused = exc.sqlstate == "28P01" or "password authentication failed" in str(exc)
                last = index == len(passwords) - 1
                if not refused or (last and attempt == PASSWORD_PASSES - 1):
                    raise
    return dialect.connect(*cargs, **cparams)


def direct_targets(s: DataSourceSettings, name: str) -> dict[str, str]:
    """libpq multi-host parameters for direct routing (they override the URL's host and port).

    The writer takes the first node that accepts writes (target_session_attrs=read-write: libpq
    asks each, so a demoted master is skipped); the reader a random standby, the primary when no
    standby answers (prefer-standby, load_balance_hosts=random). A cancel request goes to the
    server the connection is on, which HAProxy's round robin could not promise.
    """
    addresses, ports = s.node_addresses()
    targets = {"port": ",".join(ports)}
    if s.tls_name:  # verify every node by the service name its certificate holds
        targets["host"] = ",".join(s.tls_name for _ in addresses)
        targets["hostaddr"] = ",".join(addresses)
    else:
        targets["host"] = ",".join(addresses)
    if name == "writer":
        targets["target_session_attrs"] = "read-write"
    else:
        targets["target_session_attrs"] = "prefer-standby"
        targets["load_balance_hosts"] = "random"
    return targets


class DataLayer:
    """A writer engine and a reader engine (SQLAlchemy 2 on psycopg 3), like the guide's two
    datasources, with read-your-writes tokens, staleness bounds and failover-safe retries."""

    def __init__(
        self, settings: DataSourceSettings, registry: CollectorRegistry | None = None
    ) -> None:
        self.settings = settings
        # The writer checks a pooled connection before handing it out: after a failover HAProxy
        # has cut every session to the old master, and a plain write (no idempotency key) that
        # met a dead connection could only answer "retry"; one round trip per write avoids it.
        self.writer_engine = self._engine(
            settings.writer_port, settings.writer_pool_size, "writer", pool_pre_ping=True
        )
        # Reads run in autocommit: no BEGIN or ROLLBACK round trips. At READ COMMITTED every
        # statement takes its own snapshot anyway, so a transaction would add no consistency.
        self.reader_engine = self._engine(
            settings.reader_port, settings.reader_pool_size, "reader", isolation_level="AUTOCOMMIT"
        )
        for engine in (self.writer_engine, self.reader_engine):
            event.listen(engine, "handle_error", self._retire_on_role_change)
        event.listen(self.reader_engine, "before_cursor_execute", self._reader_guard)
        event.listen(self.reader_engine, "connect", self._reader_connect)
        event.listen(self.reader_engine, "before_cursor_execute", pipelined_check.begin)
        event.listen(self.reader_engine, "after_cursor_execute", pipelined_check.end)
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(
            self.registry, {"writer": self.writer_engine, "reader": self.reader_engine}
        )
        self.backoff = Backoff(deadline_s=settings.retry_deadline_s)

    def _engine(self, port: int, pool_size: int, name: str, **options: Any) -> Engine:
        s = self.settings
        url = URL.create(
            "postgresql+psycopg",
            username=s.username,
            password=s.password.get_secret_value(),
            host=s.tls_name or s.host,
            port=port,
            database=s.dbname,
        )
        connect_args: dict[str, Any] = {
            "connect_timeout": s.connect_timeout_s,
            "application_name": f"videodb-{name}",
            "sslmode": s.sslmode,
        }
        if s.tls_name:
            connect_args["hostaddr"] = s.host  # connect there, verify the certificate's name
        if s.routing == "direct":
            connect_args.update(direct_targets(s, name))
        if s.sslrootcert is not None:
            connect_args["sslrootcert"] = str(s.sslrootcert)
        engine = create_engine(
            url,
            pool_size=pool_size,
            max_overflow=0,
            pool_timeout=10,
            pool_recycle=1800,
            connect_args=connect_args,
            **options,
        )
        if s.password_file is not None:
            event.listen(engine, "do_connect", partial(connect_with_password_file, s.password_file))
        return engine

    @staticmethod
    def _retire_on_role_change(context: ExceptionContext) -> None:
        """An error that says the node behind the port died or changed role retires the whole
        pool: SQLAlchemy closes this connection, and every pooled connection made before now is
        replaced at its next checkout, including those checked out at this moment. (Disposing
        the pool instead would leave those open and orphaned until the garbage collector.)"""
        if classify(context.original_exception).role_may_have_changed:
            context.is_disconnect = True
            context.invalidate_pool_on_disconnect = True

    @staticmethod
    def _reader_guard(conn: Connection, cursor: Any, statement: str, *args: Any) -> None:
        check_read_only(statement)

    @staticmethod
    def _reader_connect(dbapi_conn: Any, _record: Any) -> None:
        # The server refuses writes too, whatever the client-side check lets through.
        cursor = dbapi_conn.cursor()
        cursor.execute("SET default_transaction_read_only = on")
        cursor.close()
        dbapi_conn.commit()

    def warm(self) -> None:
        """Open `min_idle` connections in each pool now (the guide's minimum-idle 5)."""
        for engine, size in (
            (self.writer_engine, self.settings.writer_pool_size),
            (self.reader_engine, self.settings.reader_pool_size),
        ):
            conns = [engine.connect() for _ in range(min(self.settings.min_idle, size))]
            for conn in conns:
                conn.close()

    def dispose(self) -> None:
        self.writer_engine.dispose()
        self.reader_engine.dispose()

    # -- writes ---------------------------------------------------------------------------

    @contextmanager
    def writer(self) -> Iterator[WriteUnit]:
        """A writer transaction; commits when the block ends without an exception.

        A connection failure is raised as WriteInDoubtError: the write may have committed.
        """
        try:
            conn = self.writer_engine.connect()
        except DB_ERRORS as exc:
            self._after_failure(self.writer_engine, exc)
            raise
        session = Session(bind=conn, expire_on_commit=False)
        unit = WriteUnit(session, conn)
        try:
            yield unit
            unit.commit()
        except DB_ERRORS as exc:
            failure = self._after_failure(self.writer_engine, exc)
            if failure in (Failure.CONNECTION_LOST, Failure.ADMIN_SHUTDOWN):
                raise WriteInDoubtError(
                    f"the writer's connection failed ({failure.value}): the write may or may not "
                    "have committed; retry it only with an idempotency key "
                    "(DataLayer.write_idempotent)"
                ) from exc
            raise
        finally:
            session.close()
            conn.close()

    def _after_failure(self, engine: Engine, exc: BaseException) -> Failure:
        failure = classify(exc)
        if failure.role_may_have_changed:
            # Pooled connections may point at a node that died or changed role: drop them all.
            which = "writer" if engine is self.writer_engine else "reader"
            # The pool was retired in _retire_on_role_change, as the error went through it.
            log.warning(
                "%s (port %s): %s; its pooled connections are replaced",
                which,
                engine.url.port,
                failure.value,
            )
        return failure

    def write_idempotent(
        self, key: str, fn: Callable[[Session], T], *, encode: Callable[[T], Any] = lambda v: v
    ) -> tuple[Any, ConsistencyToken | None]:
        """Run a write exactly once per `key`, retrying across a failover.

        The key and the JSON result are stored in the same transaction as the write; a retry
        (after an in-doubt failure, or a second request with the same key) returns the stored
        result instead of writing again. Returns (result as stored, token).
        """
        if not key or len(key) > 200:
            raise ValueError("an idempotency key must have 1 to 200 characters")
        delays = self.backoff.delays()
        while True:
            try:
                with self.writer() as unit:
                    row = unit.session.execute(
                        text(f"SELECT result FROM {IDEMPOTENCY_TABLE} WHERE key = :k"), {"k": key}
                    ).first()
                    if row is not None:
                        self.metrics.idempotent_replays.inc()
                        stored = row[0]
                    else:
                        stored = encode(fn(unit.session))
                        unit.session.execute(
                            text(
                                f"INSERT INTO {IDEMPOTENCY_TABLE} (key, result) "
                                "VALUES (:k, CAST(:r AS jsonb))"
                            ),
                            {"k": key, "r": json.dumps(stored)},
                        )
                return stored, unit.token
            except (WriteInDoubtError, *DB_ERRORS) as exc:
                cause = exc.__cause__ if isinstance(exc, WriteInDoubtError) else exc
                failure = classify(cause) if cause is not None else Failure.CONNECTION_LOST
                unique = isinstance(exc, sa_exc.IntegrityError) and "23505" in str(
                    getattr(exc.orig, "sqlstate", "")
                )
                if not (failure.retryable or unique):
                    raise
                delay = next(delays, None)
                if delay is None:
                    raise
                self.metrics.retries.labels("write_idempotent", failure.value).inc()
                log.warning("write %s: %s; retrying in %.2f s", key, failure.value, delay)
                time.sleep(delay)

    def prune_idempotency(self, older_than_s: float) -> int:
        """Forget idempotency keys older than `older_than_s` (a retry after that writes again).

        The table comes from the schema's migration 0002 ('platform.sh migrate').
        """
        with self.writer() as unit:
            result = unit.session.execute(
                text(
                    f"DELETE FROM {IDEMPOTENCY_TABLE} "
                    "WHERE created_at < now() - make_interval(secs => :age)"
                ),
                {"age": older_than_s},
            )
            removed = int(getattr(result, "rowcount", 0) or 0)
        if removed:
            log.info("forgot %d idempotency keys older than %.0f s", removed, older_than_s)
        return removed

    # -- reads ----------------------------------------------------------------------------

    @contextmanager
    def reader(
        self,
        token: ConsistencyToken | None = None,
        max_lag_s: float | None = None,
        *,
        pipelined: bool = False,
    ) -> Iterator[ReadUnit]:
        """A read-only session, on a replica when that is safe, else on the writer.

        With a token, the node the read port gave us must have replayed past it (waiting up to
        token_wait_ms); with max_lag_s, it must not be further behind. Otherwise the read runs on
        the writer. Both are checked on the connection the read then uses.

        `pipelined` (what `read()` uses): the check goes out with the read's first statement, in
        one round trip (db/pipelined.py); a node found behind raises NotCaughtUp from that
        statement, and the caller waits on this connection or goes to the writer (_read_once).
        """
        max_lag = max_lag_s if max_lag_s is not None else self.settings.max_lag_s
        conn = self.reader_engine.connect()
        served_by = "replica"
        waited = 0.0
        deferred = False
        try:
            cached = conn.info.get(SEEN)
            if max_lag is None and token is not None and cached is not None and cached.has(token):
                # This pooled connection's node was already seen past the token: a node only
                # moves forward while a connection to it lives, so no need to ask again.
                served_by = "replica" if cached.in_recovery else "primary"
                self.metrics.token_wait.observe(0.0)
                self.metrics.position_checks.labels("cached").inc()
            elif (token is not None or max_lag is not None) and pipelined:
                deferred = True
            elif token is not None or max_lag is not None:
                self.metrics.position_checks.labels("asked").inc()
                position = read_position(conn)
                served_by = "replica" if position.in_recovery else "primary"
                usable, waited = self.usable(partial(read_position, conn), position, token, max_lag)
                if token is not None:
                    self.metrics.token_wait.observe(waited)
                if not usable:
                    conn.close()
                    conn = self.writer_engine.connect()
                    conn.execute(text("SET TRANSACTION READ ONLY"))
                    served_by = "writer"
        except BaseException:
            conn.close()
            raise
        # Deferred: where the read ran is known once its first statement has (db/pipelined.py).
        session = ReadOnlySession(
            bind=conn, info={"served_by": "pending" if deferred else served_by}
        )
        check = pipelined_check.PendingCheck(token, max_lag, session.info) if deferred else None
        pipelined_check.arm(conn, check)
        try:
            yield ReadUnit(session, waited)
        finally:
            if check is not None:
                pipelined_check.disarm(conn, check)
            session.close()
            conn.close()
        where = session.info["served_by"]
        if where == "pending":
            return  # the read ran no statement: nothing was read, nothing checked
        if check is not None and check.passed:
            self.metrics.position_checks.labels("pipelined").inc()
            if token is not None:
                self.metrics.token_wait.observe(0.0)
        self.metrics.reads.labels(where).inc()

    def usable(
        self,
        ask: Callable[[], Position],
        position: Position,
        token: ConsistencyToken | None,
        max_lag: float | None,
    ) -> tuple[bool, float]:
        """May a read with `token` and `max_lag` run on the node at `position`? Waits up to
        token_wait_ms for a replica on the token's timeline to replay it, asking `ask` (the
        node's position, on the connection the read will use). (usable, seconds waited)."""
        if max_lag is not None and position.lag_s > max_lag:
            return False, 0.0
        if token is None or position.has(token):
            return True, 0.0
        if position.timeline != token.timeline or not position.in_recovery:
            # Another timeline: the write may be on a history this node does not follow.
            return False, 0.0
        began = time.monotonic()
        deadline = began + self.settings.token_wait_ms / 1000
        while time.monotonic() < deadline:
            time.sleep(0.002)
            position = ask()
            if position.has(token):
                return True, time.monotonic() - began
        return False, time.monotonic() - began

    def _read_once(
        self, fn: Callable[[Session], T], token: ConsistencyToken | None, max_lag_s: float | None
    ) -> T:
        """One read, its position check pipelined with its first statement (db/pipelined.py)."""
        max_lag = max_lag_s if max_lag_s is not None else self.settings.max_lag_s
        with self.reader(token, max_lag_s, pipelined=True) as unit:
            try:
                return fn(unit.session)
            except pipelined_check.NotCaughtUp as exc:
                behind = exc.position
            self.metrics.position_checks.labels("behind").inc()
            # The node had not replayed the token (or lags past the bound): those rows are
            # dropped. Wait on this same node for its replay, as a check asked first would, and
            # read again there; else on the writer.
            unit.session.rollback()
            ask = partial(read_position, unit.session.connection())
            usable, waited = self.usable(ask, behind, token, max_lag)
            if token is not None:
                self.metrics.token_wait.observe(waited)
            if usable:
                unit.session.info["served_by"] = "replica" if behind.in_recovery else "primary"
                return fn(unit.session)
            unit.session.info["served_by"] = "pending"  # this node served nothing
        with self._on_writer() as unit:
            return fn(unit.session)

    @contextmanager
    def _on_writer(self) -> Iterator[ReadUnit]:
        """A read-only session on the writer: the fallback of read-your-writes and staleness."""
        conn = self.writer_engine.connect()
        try:
            conn.execute(text("SET TRANSACTION READ ONLY"))
        except BaseException:
            conn.close()
            raise
        session = ReadOnlySession(bind=conn, info={"served_by": "writer"})
        try:
            yield ReadUnit(session)
        finally:
            session.close()
            conn.close()
        self.metrics.reads.labels("writer").inc()

    def read(
        self,
        fn: Callable[[Session], T],
        token: ConsistencyToken | None = None,
        max_lag_s: float | None = None,
    ) -> T:
        """Run a read, retried with jittered backoff across a failover (reads are idempotent)."""
        return self._retrying("read", lambda: self._read_once(fn, token, max_lag_s))

    def fetch(
        self,
        sql: str,
        params: Params = None,
        token: ConsistencyToken | None = None,
        max_lag_s: float | None = None,
        *,
        row_factory: RowFactory[Any] = tuple_row,
    ) -> list[Any]:
        """The rows of one read-only SQL statement (psycopg placeholders), with read()'s rules
        and retries but no ORM Session: for hot paths (db/fetch.py). `row_factory`: psycopg's,
        e.g. psycopg.rows.dict_row."""
        max_lag = max_lag_s if max_lag_s is not None else self.settings.max_lag_s
        return self._retrying(
            "fetch", lambda: fetch_once(self, sql, params, token, max_lag, row_factory)
        )

    def _retrying(self, operation: str, attempt: Callable[[], T]) -> T:
        delays = self.backoff.delays()
        while True:
            try:
                return attempt()
            except DB_ERRORS as exc:
                failure = self._after_failure(self.reader_engine, exc)
                if not failure.retryable:
                    raise
                delay = next(delays, None)
                if delay is None:
                    raise
                self.metrics.retries.labels(operation, failure.value).inc()
                log.warning("%s: %s; retrying in %.2f s", operation, failure.value, delay)
                time.sleep(delay)
