"""Benchmark: read latency and throughput through the data layer, and the token check's cost.

    .venv/bin/python -m bench.read_latency [--reads 5000]

On one throwaway cluster (free ports, temporary directory), one client thread:
  raw, read port    a persistent psycopg connection through HAProxy's read port (no pool)
  raw, slave        a persistent psycopg connection straight to the slave
  read()            DataLayer.read() through the read port (pool checkout + session + query)
  fetch()           DataLayer.fetch(): the same statement, pooled, straight through the driver
  fetch, pipelined  fetch() with the position check forced (sent with the statement)
  token, cached     the same with a token this pooled connection's node was already seen past
  token, pipelined  the position check forced, sent with the read (one round trip)
  token, asked      the position check forced, asked first (reader() without pipelining)
  direct routing    DataLayer.read() with routing = "direct" (libpq multi-host, no proxy)
Then the fallback rate: reads carrying the token of the write just made, while a second thread
writes continuously, are served by a replica that has replayed it, or else by the writer.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import psycopg
from sqlalchemy import text
from sqlalchemy.orm import Session

from videodb.cluster import lifecycle
from videodb.db import DataLayer, DataSourceSettings
from videodb.sandbox import sandbox

QUERY = "SELECT v FROM bench_read WHERE id = 1"


def measure(reads: int, op: Callable[[], object]) -> tuple[float, float, float]:
    """(p50 ms, p99 ms, reads per second)."""
    for _ in range(200):
        op()
    samples = []
    began = time.perf_counter()
    for _ in range(reads):
        t0 = time.perf_counter()
        op()
        samples.append((time.perf_counter() - t0) * 1000)
    total = time.perf_counter() - began
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1], reads / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=5000)
    args = parser.parse_args()
    with sandbox("videodb-bench-") as box:
        s = box.settings
        try:
            lifecycle.start(s, box.layout)
            layer = DataLayer(DataSourceSettings.for_platform(s))
            layer.warm()
            with layer.writer() as unit:
                unit.session.execute(text("CREATE TABLE bench_read (id int PRIMARY KEY, v int)"))
                unit.session.execute(text("INSERT INTO bench_read VALUES (1, 0)"))
            token = unit.token
            time.sleep(0.5)  # let the slave replay the table before reading it directly
            db = s.database
            common: dict[str, Any] = {
                "host": s.listen_host,
                "user": db.app_user,
                "password": db.app_password.get_secret_value(),
                "dbname": db.name,
                "autocommit": True,
            }
            raw_port = psycopg.connect(port=s.haproxy.read_port, **common)
            raw_slave = psycopg.connect(port=s.nodes[1].port, **common)
            direct_layer = DataLayer(DataSourceSettings.for_platform(s, routing="direct"))
            direct_layer.warm()

            def query(session: Session) -> None:
                session.execute(text(QUERY)).scalar_one()

            def asked() -> None:
                with layer.reader(token, max_lag_s=3600.0) as r:
                    query(r.session)

            results = {
                "raw, read port": measure(
                    args.reads, lambda: raw_port.execute(QUERY).fetchone() and None
                ),
                "raw, slave": measure(
                    args.reads, lambda: raw_slave.execute(QUERY).fetchone() and None
                ),
                "read()": measure(args.reads, lambda: layer.read(query)),
                "fetch()": measure(args.reads, lambda: layer.fetch(QUERY)),
                "fetch, pipelined": measure(
                    args.reads, lambda: layer.fetch(QUERY, token=token, max_lag_s=3600.0)
                ),
                "token, cached": measure(args.reads, lambda: layer.read(query, token)),
                # a staleness bound makes the layer check the node every time: what a read
                # right after a write (a token newer than the connection has seen) costs
                "token, pipelined": measure(
                    args.reads, lambda: layer.read(query, token, max_lag_s=3600.0)
                ),
                "token, asked": measure(args.reads, asked),
                "direct routing": measure(args.reads, lambda: direct_layer.read(query)),
            }
            print(f"{args.reads} sequential reads each, one client:")
            for name, (p50, p99, rate) in results.items():
                print(f"  {name:17s} p50 {p50:6.3f} ms  p99 {p99:6.3f} ms  {rate:7.0f} reads/s")
            base = results["read()"][0]
            for name in ("token, cached", "token, pipelined", "token, asked"):
                print(f"{name}: adds {results[name][0] - base:.3f} ms at p50 to a read()")
            fetched = results["fetch()"][0]
            print(
                "fetch, pipelined: adds "
                f"{results['fetch, pipelined'][0] - fetched:.3f} ms at p50 to a fetch()"
            )
            raw = results["raw, read port"][0]
            print(f"read() / raw psycopg over the read port at p50: {base / raw:.2f}x")
            print(f"fetch() / raw psycopg over the read port at p50: {fetched / raw:.2f}x")
            raw_port.close()
            raw_slave.close()
            direct_layer.dispose()

            stop = threading.Event()
            latest = [token]

            def writer() -> None:
                while not stop.is_set():
                    with layer.writer() as w:
                        w.session.execute(text("UPDATE bench_read SET v = v + 1 WHERE id = 1"))
                    latest[0] = w.token

            thread = threading.Thread(target=writer)
            thread.start()
            served: Counter[str] = Counter()
            try:
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    with layer.reader(latest[0]) as r:
                        r.session.execute(text(QUERY)).scalar_one()
                        served[r.served_by] += 1
            finally:
                stop.set()
                thread.join()
            total = sum(served.values())
            print(
                f"under a concurrent write load, reads with the latest write's token over 10 s: "
                f"{total} reads, replica {served['replica']}, primary via the read port "
                f"{served['primary']}, fallback to the writer {served['writer']} "
                f"({100 * served['writer'] / total:.1f} %)"
            )
            layer.dispose()
        finally:
            lifecycle.stop(s, box.layout)


if __name__ == "__main__":
    main()
