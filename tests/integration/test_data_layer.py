"""The applications' data layer on the real cluster: read-your-writes, staleness, read-only
reader sessions, HTTP tokens, and reads and writes across a switchover."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from functools import partial

import psycopg
import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Column, Integer, MetaData, Table, insert, text
from sqlalchemy.orm import Session

from tests.integration.harness import RunningCluster, set_apply_delay
from videodb.cluster.drill import child_pids
from videodb.cluster.health import check_health
from videodb.cluster.patroni_api import PatroniAPI
from videodb.cluster.postmaster import postmaster_pid
from videodb.db import (
    HEADER,
    ConsistencyToken,
    DataLayer,
    DataSourceSettings,
    ReadOnlySessionError,
    WriteUnit,
)
from videodb.db.web import reader_dependency, writer_dependency
from videodb.waiting import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=["haproxy", "direct"])
def layer(cluster: RunningCluster, request: pytest.FixtureRequest) -> Iterator[DataLayer]:
    """The same suite through HAProxy's ports and with direct routing (libpq multi-host)."""
    # The pool keeps the connections warm() opens: if the read port had only the master in
    # that moment (a replica just rejoined after another module's switchover), every read of
    # the suite would go there.
    wait_for(
        partial(read_port_reaches_both, cluster),
        timeout=60,
        what="the read port reaching the master and the slave",
    )
    data_layer = DataLayer(DataSourceSettings.for_platform(cluster.settings, routing=request.param))
    data_layer.warm()
    with data_layer.writer() as unit:
        unit.session.execute(
            text("CREATE TABLE IF NOT EXISTS rw_check (id int PRIMARY KEY, v int)")
        )
        unit.session.execute(text("INSERT INTO rw_check VALUES (1, 0) ON CONFLICT DO NOTHING"))
    yield data_layer
    data_layer.dispose()


def read_port_reaches_both(cluster: RunningCluster) -> bool:
    seen = set()
    for _ in range(6):
        with cluster.app_connect(cluster.read_port) as conn:
            row = conn.execute("SELECT inet_server_port()").fetchone()
            assert row is not None
            seen.add(row[0])
    return seen == {cluster.master, cluster.slave}


def read_value(session: Session) -> tuple[int, str]:
    value = session.execute(text("SELECT v FROM rw_check WHERE id = 1")).scalar_one()
    return int(value), str(session.info["served_by"])


SERVED = ("replica", "primary", "writer")


def fetch_value(
    layer: DataLayer, token: ConsistencyToken | None, max_lag_s: float | None
) -> tuple[int, str]:
    """The same read as read_value through DataLayer.fetch (no Session); where it was served,
    from the reads metric (one read, one increment)."""

    def count(where: str) -> float:
        return layer.registry.get_sample_value("videodb_reads_total", {"served_by": where}) or 0.0

    before = {where: count(where) for where in SERVED}
    rows = layer.fetch("SELECT v FROM rw_check WHERE id = %s", (1,), token, max_lag_s)
    moved = [where for where in SERVED if count(where) > before[where]]
    assert len(moved) == 1, moved
    return int(rows[0][0]), moved[0]


def write_then_read(
    layer: DataLayer,
    pairs: int,
    *,
    with_token: bool,
    max_lag_s: float | None = None,
    via: str = "read",
) -> tuple[int, Counter[str]]:
    """Returns (stale reads, where reads were served); `via` read() or fetch()."""
    stale = 0
    served: Counter[str] = Counter()
    for _ in range(pairs):
        with layer.writer() as unit:
            value = unit.session.execute(
                text("UPDATE rw_check SET v = v + 1 WHERE id = 1 RETURNING v")
            ).scalar_one()
        token = unit.token if with_token else None
        if via == "fetch":
            seen, where = fetch_value(layer, token, max_lag_s)
        else:
            seen, where = layer.read(read_value, token, max_lag_s=max_lag_s)
        served[where] += 1
        if seen < value:
            stale += 1
    return stale, served


def test_tokens_never_read_stale_data_while_replay_is_delayed(
    cluster: RunningCluster, layer: DataLayer
) -> None:
    try:
        # A delay the token wait (100 ms) covers: reads wait on the replica, then run there.
        set_apply_delay(cluster, "30ms")
        stale, served = write_then_read(layer, 200, with_token=True)
        assert stale == 0, served
        assert served["replica"] > 20, served
        stale, served = write_then_read(layer, 150, with_token=True, via="fetch")
        assert stale == 0 and served["replica"] > 15, served
        # the check went out with the read (one round trip); a node found behind was read again
        checks = layer.registry.get_sample_value
        assert (checks("videodb_position_checks_total", {"how": "behind"}) or 0) > 0
        # No delay: the replica has the write by the time the read arrives, in one round trip.
        set_apply_delay(cluster, None)
        before = checks("videodb_position_checks_total", {"how": "pipelined"}) or 0.0
        stale, served = write_then_read(layer, 100, with_token=True)
        assert stale == 0, served
        assert (checks("videodb_position_checks_total", {"how": "pipelined"}) or 0) > before
        # A delay it does not cover: reads that land on the replica fall back to the writer.
        set_apply_delay(cluster, "300ms")
        fallbacks_before = (
            layer.registry.get_sample_value("videodb_reads_total", {"served_by": "writer"}) or 0.0
        )
        stale, served = write_then_read(layer, 100, with_token=True)
        assert stale == 0, served
        assert served["writer"] > 20 and served["replica"] == 0, served
        fallbacks = layer.registry.get_sample_value("videodb_reads_total", {"served_by": "writer"})
        assert fallbacks == fallbacks_before + served["writer"]  # the metric counts them
        stale, served = write_then_read(layer, 100, with_token=True, via="fetch")
        assert stale == 0 and served["writer"] > 20 and served["replica"] == 0, served
        # Without a token the same reads do go to the slave, and there they are stale.
        stale, served = write_then_read(layer, 100, with_token=False)
        assert served["replica"] > 20 and stale > 20, (stale, served)
        stale, served = write_then_read(layer, 60, with_token=False, via="fetch")
        assert served["replica"] > 10 and stale > 10, (stale, served)
        # A staleness bound keeps reads off the lagging replica.
        stale, served = write_then_read(layer, 100, with_token=False, max_lag_s=0.1)
        assert served["replica"] == 0 and stale == 0, (stale, served)
    finally:
        set_apply_delay(cluster, None)


def test_write_through_a_reader_session_never_reaches_the_database(layer: DataLayer) -> None:
    table = Table("no_such_table_for_reader_check", MetaData(), Column("id", Integer))
    # Had any of these reached PostgreSQL, it would answer "relation does not exist".
    with layer.reader() as read, pytest.raises(ReadOnlySessionError, match="reader session"):
        read.session.execute(text("INSERT INTO no_such_table_for_reader_check VALUES (1)"))
    with layer.reader() as read, pytest.raises(ReadOnlySessionError):
        read.session.execute(insert(table).values(id=1))
    with layer.reader() as read, pytest.raises(ReadOnlySessionError):
        read.session.execute(text("WITH x AS (DELETE FROM rw_check RETURNING 1) SELECT 1"))
    with layer.reader_engine.connect() as conn, pytest.raises(ReadOnlySessionError):
        conn.execute(text("DROP TABLE rw_check"))
    with pytest.raises(ReadOnlySessionError):
        layer.fetch("DELETE FROM no_such_table_for_reader_check")
    with layer.reader() as read:
        assert read.session.execute(text("SELECT count(*) FROM rw_check")).scalar_one() == 1


def test_tokens_travel_as_header_and_cookie_and_bad_ones_are_refused(layer: DataLayer) -> None:
    app = FastAPI()
    write = writer_dependency(layer)
    read = reader_dependency(layer)

    @app.post("/bump")
    def bump(unit: WriteUnit = Depends(write)) -> dict[str, int]:
        value = unit.session.execute(
            text("UPDATE rw_check SET v = v + 1 WHERE id = 1 RETURNING v")
        ).scalar_one()
        unit.commit()
        return {"v": int(value)}

    @app.get("/value")
    def value(session: Session = Depends(read)) -> dict[str, int]:
        return {"v": int(session.execute(text("SELECT v FROM rw_check")).scalar_one())}

    with TestClient(app) as client:
        for _ in range(50):
            written = client.post("/bump")
            assert written.status_code == 200
            token = written.headers[HEADER]
            ConsistencyToken.parse(token)
            # http.cookies quotes a value with '/' in it; the server side unquotes it.
            assert (client.cookies.get("consistency_token") or "").strip('"') == token
            # The cookie alone carries it (another service behind the same site).
            assert client.get("/value").json()["v"] >= written.json()["v"]
        other = TestClient(app)
        assert other.get("/value", headers={HEADER: token}).json()["v"] >= written.json()["v"]
        bad = other.get("/value", headers={HEADER: "not-a-token"})
        assert bad.status_code == 400
        assert "malformed consistency token 'not-a-token'" in bad.json()["detail"]


def insert_upload(session: Session, key: str) -> int:
    n = session.execute(
        text("INSERT INTO uploads (key) VALUES (:k) RETURNING n"), {"k": key}
    ).scalar_one()
    return int(n)


def served_by(session: Session) -> str:
    session.execute(text("SELECT 1"))  # where a read ran is known once it has run a statement
    return str(session.info["served_by"])


def count_uploads(session: Session) -> int:
    return int(session.execute(text("SELECT count(*) FROM uploads")).scalar_one())


def more_than(items: list[str], count: int) -> bool:
    return len(items) > count


def test_reads_continue_and_idempotent_writes_resume_across_failovers(
    cluster: RunningCluster, layer: DataLayer
) -> None:
    with layer.writer() as unit:
        unit.session.execute(
            text("CREATE TABLE IF NOT EXISTS uploads (key text PRIMARY KEY, n serial)")
        )
    created = unit.token  # reads carry it: none may run before the table exists
    stop = threading.Event()
    read_failures: list[str] = []
    reads = 0
    keys: list[str] = []
    write_failures: list[str] = []

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            try:
                layer.read(count_uploads, created)
                layer.fetch("SELECT count(*) FROM uploads", token=created)
                reads += 1
            except Exception as exc:  # any failure that escaped the retries
                read_failures.append(repr(exc))
            time.sleep(0.005)

    def writer() -> None:
        while not stop.is_set():
            key = str(uuid.uuid4())
            try:
                layer.write_idempotent(key, partial(insert_upload, key=key))
                keys.append(key)
            except Exception as exc:
                write_failures.append(repr(exc))
            time.sleep(0.01)

    threads = [threading.Thread(target=reader), threading.Thread(target=writer)]
    for thread in threads:
        thread.start()
    try:
        wait_for(partial(more_than, keys, 5), timeout=30, what="writes under way")
        for _ in range(2):  # there and back: the other tests expect the original roles
            before = len(keys)
            assert cluster.cli("switchover", timeout=120).rc == 0
            wait_for(partial(more_than, keys, before + 20), timeout=30, what="writes resuming")
        wait_for(
            lambda: check_health(cluster.settings).healthy, timeout=60, what="a healthy cluster"
        )
        # An unplanned failure too: the master's whole postgres instance killed (-9).
        before = len(keys)
        leader = wait_for(PatroniAPI(cluster.settings).leader, timeout=30, what="a leader")
        data_dir = cluster.layout.node_data(leader.name)
        pm = wait_for(partial(postmaster_pid, data_dir), timeout=30, what="its postmaster")
        for pid in [pm, *child_pids(pm)]:
            os.kill(pid, signal.SIGKILL)
        wait_for(partial(more_than, keys, before + 20), timeout=60, what="writes resuming")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert read_failures == [] and write_failures == []
    assert reads > 100 and len(keys) > 40
    with cluster.app_connect(cluster.write_port) as conn:
        rows = conn.execute("SELECT count(*) FROM uploads WHERE key = ANY(%s)", (keys,)).fetchone()
    assert rows == (len(keys),)  # each acknowledged once, none written twice
    wait_for(
        lambda: check_health(cluster.settings).healthy,
        timeout=60,
        what="the cluster healthy again",
    )
    final = PatroniAPI(cluster.settings).leader()
    assert final is not None and final.name == "postgres-video-master"
    # The table's token is from two timelines ago: a read carrying it goes to the writer
    # (max_lag_s makes the layer ask the node rather than trust what a connection saw).
    for _ in range(6):
        assert layer.read(served_by, created, max_lag_s=3600.0) == "writer"
    writer_reads = layer.registry.get_sample_value("videodb_reads_total", {"served_by": "writer"})
    assert layer.fetch("SELECT count(*) FROM uploads", token=created, max_lag_s=3600.0)
    after = layer.registry.get_sample_value("videodb_reads_total", {"served_by": "writer"})
    assert after == (writer_reads or 0) + 1


def test_classification_of_a_real_read_only_error(cluster: RunningCluster) -> None:
    from videodb.db import Failure, classify

    wait_for(lambda: check_health(cluster.settings).healthy, timeout=60, what="a healthy cluster")

    with cluster.app_connect(cluster.slave) as conn, pytest.raises(psycopg.Error) as info:
        conn.execute("CREATE TABLE must_fail (id int)")
    assert classify(info.value) is Failure.READ_ONLY


def test_idempotency_keys_expire(cluster: RunningCluster, layer: DataLayer) -> None:
    """Keys older than the time to live are forgotten; younger ones still replay."""
    old, young = f"expiry-old-{uuid.uuid4()}", f"expiry-young-{uuid.uuid4()}"
    for key in (old, young):
        layer.write_idempotent(key, lambda _s: {"made": True})
    with layer.writer() as unit:
        unit.session.execute(
            text(
                "UPDATE videodb_idempotency SET created_at = now() - interval '25 hours' "
                "WHERE key = :k"
            ),
            {"k": old},
        )
    assert layer.prune_idempotency(24 * 3600) >= 1
    with layer.writer() as unit:
        left = set(
            unit.session.execute(
                text("SELECT key FROM videodb_idempotency WHERE key IN (:a, :b)"),
                {"a": old, "b": young},
            ).scalars()
        )
    assert left == {young}
    # A retry of the young key replays; the old one would run the write again.
    ran: list[str] = []

    def write(_: Session) -> dict[str, bool]:
        ran.append("again")
        return {"made": True}

    layer.write_idempotent(young, write)
    assert ran == []


def test_a_cancelled_read_through_the_direct_reader_stops_its_own_query(
    cluster: RunningCluster,
) -> None:
    # A cancel request is a new connection: through HAProxy's read port (round robin) it may
    # land on the other server and cancel nothing. The direct reader sends it to the server its
    # connection is on.
    layer = DataLayer(DataSourceSettings.for_platform(cluster.settings, routing="direct"))
    try:
        for _ in range(4):  # random hosts: more than one of them
            with layer.reader() as unit:
                driver = unit.session.connection().connection.driver_connection
                assert driver is not None
                timer = threading.Timer(0.5, driver.cancel_safe)
                timer.start()
                began = time.monotonic()
                with pytest.raises(Exception) as raised:
                    unit.session.execute(text("SELECT pg_sleep(30)"))
                timer.join()
                assert time.monotonic() - began < 10
                cause = getattr(raised.value, "orig", raised.value)
                assert getattr(cause, "sqlstate", None) == "57014", raised.value
    finally:
        layer.dispose()
