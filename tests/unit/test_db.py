"""The data layer's pure parts: tokens, error classes, read-only checks, backoff, settings."""

from __future__ import annotations

import random
import time
from pathlib import Path

import psycopg
import pytest
from psycopg import errors

from videodb.config import Settings
from videodb.db import (
    ConsistencyToken,
    DataSourceSettings,
    Failure,
    ReadOnlySessionError,
    TokenError,
    classify,
)
from videodb.db.layer import connect_with_password_file, direct_targets
from videodb.db.readonly import check_read_only
from videodb.db.retry import Backoff
from videodb.db.token import format_lsn, parse_lsn
from videodb.errors import ConfigError


def test_token_round_trip_and_order() -> None:
    token = ConsistencyToken.parse("2:0/3000148")
    assert (token.timeline, token.lsn) == (2, 0x3000148)
    assert str(token) == "2:0/3000148"
    assert (
        ConsistencyToken.parse(str(ConsistencyToken(7, (0x1A << 32) | 0xFF))).lsn
        == (0x1A << 32) | 0xFF
    )
    older, newer = ConsistencyToken(2, 10), ConsistencyToken(3, 5)
    assert older.newest(newer) == newer and newer.newest(None) == newer
    assert parse_lsn(format_lsn(123456789012)) == 123456789012


@pytest.mark.parametrize(
    "text", ["", "garbage", "2:0-3000148", "0:0/1", "x:0/1", "2:0/", "2:0/123456789", "2:/1"]
)
def test_malformed_tokens_are_refused_with_the_expected_form(text: str) -> None:
    with pytest.raises(TokenError, match=r"TIMELINE:LSN|timeline must be"):
        ConsistencyToken.parse(text)


@pytest.mark.parametrize(
    ("sqlstate", "failure", "retry"),
    [
        ("08006", Failure.CONNECTION_LOST, True),  # the node went away: another will answer
        ("08001", Failure.CONNECTION_LOST, True),
        ("57P01", Failure.ADMIN_SHUTDOWN, True),  # a switchover's fast shutdown
        ("57P03", Failure.ADMIN_SHUTDOWN, True),  # still starting up
        ("25006", Failure.READ_ONLY, True),  # the write port's node is being demoted
        ("40001", Failure.SERIALIZATION, True),
        ("40P01", Failure.SERIALIZATION, True),
        ("23505", Failure.OTHER, False),  # a duplicate stays a duplicate
        ("42P01", Failure.OTHER, False),  # a missing table: a bug, not a failover
    ],
)
def test_errors_are_classified_by_sqlstate(sqlstate: str, failure: Failure, retry: bool) -> None:
    exc = errors.lookup(sqlstate)("boom")
    assert classify(exc) is failure
    assert classify(exc).retryable is retry


def test_a_dropped_socket_is_a_lost_connection() -> None:
    assert classify(psycopg.OperationalError("server closed the connection")) is (
        Failure.CONNECTION_LOST
    )
    assert classify(ValueError("not a database error")) is Failure.OTHER


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "  select * from t",
        "WITH x AS (SELECT 1) SELECT * FROM x",
        "-- comment\nSELECT 1",
        "/* c */ SHOW server_version",
        "(SELECT 1) UNION (SELECT 2)",
        "EXPLAIN SELECT 1",
    ],
)
def test_reads_pass_the_read_only_check(sql: str) -> None:
    check_read_only(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO t VALUES (1)",
        "update t set a = 1",
        "DELETE FROM t",
        "CREATE TABLE t (a int)",
        "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        "/* select */ TRUNCATE t",
        "SET transaction_read_only = off",
        "COPY t FROM STDIN",
    ],
)
def test_writes_fail_the_read_only_check(sql: str) -> None:
    with pytest.raises(ReadOnlySessionError, match="reader session"):
        check_read_only(sql)


def test_backoff_is_jittered_capped_and_bounded() -> None:
    rng = random.Random(7)
    slept = []
    for delay in Backoff(base_s=0.01, cap_s=0.02, deadline_s=0.1).delays(rng):
        time.sleep(delay)
        slept.append(delay)
    assert slept and sum(slept) <= 0.1  # each delay is clipped to what is left of the deadline
    many = Backoff(base_s=0.01, cap_s=0.05, deadline_s=60).delays(rng)
    first = [next(many) for _ in range(50)]
    assert all(0 <= d <= 0.05 for d in first)
    assert len(set(first)) > 40  # jittered, not a fixed schedule


def test_datasources_follow_the_guides_profiles() -> None:
    replica = DataSourceSettings.for_platform(Settings())
    assert (replica.writer_port, replica.reader_port) == (5435, 5436)
    assert (replica.writer_pool_size, replica.reader_pool_size, replica.min_idle) == (10, 15, 5)
    development = DataSourceSettings.for_platform(Settings(), "development")
    assert (development.writer_port, development.reader_port) == (5433, 5433)
    env = DataSourceSettings.from_env(
        {"DB_USERNAME": "app", "DB_PASSWORD": "pw", "VIDEODB_DB_TOKEN_WAIT_MS": "250"}
    )
    assert (env.username, env.password.get_secret_value(), env.token_wait_ms) == ("app", "pw", 250)
    assert DataSourceSettings.from_env({"VIDEODB_DB_PROFILE": "development"}).writer_port == 5433
    with pytest.raises(ConfigError, match="reader_pool_size"):
        DataSourceSettings.from_env({"VIDEODB_DB_READER_POOL_SIZE": "zero"})


def test_routing_decisions_without_a_server() -> None:
    from videodb.db.layer import DataLayer
    from videodb.db.position import Position

    layer = DataLayer(DataSourceSettings(token_wait_ms=0))
    token = ConsistencyToken(3, 1000)
    replica = Position(in_recovery=True, lsn=2000, timeline=3, lag_s=0.0)

    def never() -> Position:  # the answer is known without asking the node again
        raise AssertionError("asked")

    assert layer.usable(never, replica, token, None) == (True, 0.0)
    older_timeline = Position(True, 5000, 4, 0.0)
    assert layer.usable(never, older_timeline, token, None)[0] is False
    primary_behind = Position(False, 500, 3, 0.0)
    assert layer.usable(never, primary_behind, token, None)[0] is False
    lagging = Position(True, 2000, 3, 7.5)
    assert layer.usable(never, lagging, token, 5.0)[0] is False
    assert layer.usable(never, lagging, None, 10.0)[0] is True
    behind = Position(True, 900, 3, 0.0)  # on the token's timeline, not there yet: asks again
    answers = iter([Position(True, 950, 3, 0.0), Position(True, 1000, 3, 0.0)])
    waiting = DataLayer(DataSourceSettings(token_wait_ms=2000))
    usable, waited = waiting.usable(lambda: next(answers), behind, token, None)
    assert usable and waited > 0
    waiting.dispose()
    # fetch() refuses a write before it takes a connection (there is no server here)
    with pytest.raises(ReadOnlySessionError, match="reader session"):
        layer.fetch("UPDATE videos SET views = 0")
    layer.dispose()


class _SwitchingServer:
    """A role whose password changes from 'old' to 'new' right after the first refusal: the
    rotation's race (the new one refused, then the old one too)."""

    def __init__(self) -> None:
        self.current = "old"
        self.tries: list[str] = []

    def connect(self, *_: object, password: str) -> str:
        self.tries.append(password)
        if password != self.current:
            self.current = "new"
            raise psycopg.OperationalError('FATAL:  password authentication failed for user "u"')
        return f"connected with {password}"


def test_a_password_change_between_two_attempts_is_retried(tmp_path: Path) -> None:
    path = tmp_path / "app-password"
    path.write_text("new\nold\n")
    server = _SwitchingServer()
    assert connect_with_password_file(path, server, None, (), {}) == "connected with new"
    assert server.tries == ["new", "old", "new"]


def test_a_wrong_password_is_not_retried_forever(tmp_path: Path) -> None:
    path = tmp_path / "app-password"
    path.write_text("wrong\n")
    server = _SwitchingServer()
    server.current = "right"
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect_with_password_file(path, server, None, (), {})
    assert len(server.tries) == 3


def test_direct_routing_needs_the_nodes_and_names_the_fix() -> None:
    with pytest.raises(ValueError, match="list them in nodes"):
        DataSourceSettings(routing="direct")
    with pytest.raises(ValueError, match="is not address:port"):
        DataSourceSettings(routing="direct", nodes=("10.0.0.5",))
    parsed = DataSourceSettings.from_env(
        {"VIDEODB_DB_ROUTING": "direct", "VIDEODB_DB_NODES": "10.0.0.5:5433, 10.0.0.6:5434"}
    )
    assert parsed.nodes == ("10.0.0.5:5433", "10.0.0.6:5434")


def test_direct_targets_ask_for_a_writable_node_and_any_standby_by_service_name() -> None:
    s = DataSourceSettings(
        routing="direct", nodes=("10.0.0.5:5433", "10.0.0.6:5434"), tls_name="video-postgres"
    )
    writer = direct_targets(s, "writer")
    assert writer == {
        "port": "5433,5434",
        "host": "video-postgres,video-postgres",
        "hostaddr": "10.0.0.5,10.0.0.6",
        "target_session_attrs": "read-write",
    }
    reader = direct_targets(s, "reader")
    assert reader["target_session_attrs"] == "prefer-standby"
    assert reader["load_balance_hosts"] == "random"


def test_a_pipelined_check_is_forgotten_even_on_a_connection_a_failover_invalidated() -> None:
    from videodb.db import pipelined

    class Invalidated:
        @property
        def info(self) -> dict[str, object]:
            raise RuntimeError("Can't reconnect until invalid transaction is rolled back")

    class Pipeline:
        exited = 0

        def __exit__(self, *_: object) -> None:
            Pipeline.exited += 1
            raise RuntimeError("the server closed the connection")

    check = pipelined.PendingCheck(None, None, {"served_by": "pending"}, pipeline=Pipeline())
    pipelined.disarm(Invalidated(), check)  # type: ignore[arg-type]  # raises nothing
    assert check.done and Pipeline.exited == 1
