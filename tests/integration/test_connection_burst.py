"""A burst of new connections on the write port must not take the master out of HAProxy.

An application fleet restarting its pools opens hundreds of connections at once. PostgreSQL's
listen backlog then overflows for a moment and some of HAProxy's connects to it time out. That is
load, not a dead master: the server must stay UP and established sessions must live on.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest

from tests.integration.harness import RunningCluster
from videodb.cluster.haproxy_stats import fetch_server_status
from videodb.cluster.render import WRITE_BACKEND

pytestmark = pytest.mark.integration


async def _burst(cluster: RunningCluster, count: int, seconds: float) -> tuple[int, int]:
    """`count` connection attempts on the write port at once; (connected, refused)."""
    db = cluster.settings.database
    params: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": cluster.write_port,
        "user": db.app_user,
        "password": db.app_password.get_secret_value(),
        "dbname": db.name,
        "connect_timeout": 10,
    }

    async def attempt() -> bool:
        try:
            conn = await psycopg.AsyncConnection.connect(**params)
        except psycopg.Error:
            return False  # "too many clients" and the like: the burst's own business
        await asyncio.sleep(0.2)  # hold it a moment, as a pool filling up does
        await conn.close()
        return True

    tasks = [asyncio.ensure_future(attempt()) for _ in range(count)]
    done, pending = await asyncio.wait(tasks, timeout=seconds)
    for task in pending:
        task.cancel()
    ok = sum(1 for t in done if not t.cancelled() and t.exception() is None and t.result())
    return ok, count - ok


def _down_transitions(cluster: RunningCluster) -> dict[str, int]:
    return {
        s.server: s.down_transitions
        for s in fetch_server_status(cluster.settings)
        if s.backend == WRITE_BACKEND
    }


@pytest.mark.parametrize("count", [300, 1000])
def test_a_steady_session_survives_a_burst_of_connections(
    cluster: RunningCluster, count: int
) -> None:
    before = _down_transitions(cluster)
    with cluster.app_connect(cluster.write_port) as steady:
        row = steady.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        backend_pid = row[0]
        began = time.monotonic()
        connected, refused = asyncio.run(_burst(cluster, count, seconds=60))
        elapsed = time.monotonic() - began
        # The session that did nothing wrong is still there, on the same backend.
        row = steady.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None and row[0] == backend_pid
    after = _down_transitions(cluster)
    assert connected > 0, f"no connection of {count} got through ({refused} refused)"
    assert after == before, (
        f"HAProxy marked a write server DOWN during a burst of {count} connects "
        f"({connected} connected, {refused} refused in {elapsed:.1f} s): {before} -> {after}"
    )
    # And the write port still has its master.
    with cluster.app_connect(cluster.write_port) as conn:
        assert conn.execute("SELECT NOT pg_is_in_recovery()").fetchone() == (True,)
