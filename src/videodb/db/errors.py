"""How a database error is handled: classified by SQLSTATE, not by message text."""

from __future__ import annotations

from enum import StrEnum

import psycopg
from sqlalchemy import exc as sa_exc

from videodb.errors import VideoDBError


class Failure(StrEnum):
    CONNECTION_LOST = "connection_lost"  # 08xxx, or the socket died: node down or failing over
    ADMIN_SHUTDOWN = "admin_shutdown"  # 57P01-57P03: the server is stopping or starting
    READ_ONLY = "read_only"  # 25006: the "writer" is a replica now (promotion under way)
    SERIALIZATION = "serialization"  # 40001, 40P01: retry the whole transaction
    OTHER = "other"  # a bug or bad data: never retried

    @property
    def retryable(self) -> bool:
        return self is not Failure.OTHER

    @property
    def role_may_have_changed(self) -> bool:
        return self in (Failure.CONNECTION_LOST, Failure.ADMIN_SHUTDOWN, Failure.READ_ONLY)


class ReadOnlySessionError(VideoDBError):
    """A write was attempted through a reader session; it was stopped before any database."""


class WriteInDoubtError(VideoDBError):
    """A write's connection failed: it may or may not have committed. Not retried blindly."""


def _sqlstate(exc: BaseException) -> str | None:
    original = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
    if isinstance(original, psycopg.Error):
        return original.sqlstate
    return None


def classify(exc: BaseException) -> Failure:
    state = _sqlstate(exc)
    if state is None:
        if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
            return Failure.CONNECTION_LOST
        original = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
        if isinstance(original, psycopg.OperationalError | psycopg.InterfaceError):
            return Failure.CONNECTION_LOST
        return Failure.OTHER
    if state.startswith("08"):
        return Failure.CONNECTION_LOST
    if state in ("57P01", "57P02", "57P03"):
        return Failure.ADMIN_SHUTDOWN
    if state == "25006":
        return Failure.READ_ONLY
    if state in ("40001", "40P01"):
        return Failure.SERIALIZATION
    return Failure.OTHER
