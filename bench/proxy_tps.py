"""Benchmark: pgbench -n -S TPS direct to the master, through HAProxy, and with direct routing.

    .venv/bin/python -m bench.proxy_tps [--seconds 10] [--clients 4] [--scale 10] [--rounds 3]

Direct to the master (over TCP with TLS as libpq prefers, without TLS, and on its unix socket);
HAProxy's read and write ports (TLS passed through, and without TLS); HAProxy over unix sockets
(the project's write listener, rendered by the platform, moved onto a unix socket with its server
lines on PostgreSQL's socket and the REST check on the Patroni port: a second HAProxy run by the
bench); and what the data layer's direct routing asks libpq for (multi-host: the writer
target_session_attrs=read-write, the reader prefer-standby with load_balance_hosts=random). All in
one run on one cluster (free ports, temporary directory), in rounds, so the figures that matter are
the ratios. Then the same select through the data layer (`DataLayer.fetch()`, as many threads as
clients) with routing haproxy and direct, against raw psycopg connections to the master in the same
threads (Python threads: the absolute figures are the interpreter's, the ratios are the layer's).
Also measures how long a row committed through the write port takes to be visible on the replica
(replication visibility).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg

from videodb.cluster import lifecycle, render
from videodb.config import Settings
from videodb.db import DataLayer, DataSourceSettings
from videodb.layout import StateLayout
from videodb.sandbox import sandbox
from videodb.waiting import wait_for


def pgbench(
    settings: Settings,
    port: int | str,
    args: list[str],
    extra_env: dict[str, str] | None = None,
    host: str | None = None,
) -> str:
    """pgbench as the application role; `extra_env`: libpq variables (PGSSLMODE...); `host` and
    `port` may list several (libpq multi-host)."""
    db = settings.database
    env = {**os.environ, "PGPASSWORD": db.app_password.get_secret_value(), **(extra_env or {})}
    argv = [
        str(settings.postgresql.bin_dir / "pgbench"),
        "-h",
        host or settings.listen_host,
        "-p",
        str(port),
        "-U",
        db.app_user,
        *args,
        db.name,
    ]
    return subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout


def tps(output: str) -> float:
    match = re.search(r"tps = ([0-9.]+)", output)
    if not match:
        raise RuntimeError(f"no tps in pgbench output:\n{output}")
    return float(match.group(1))


def visibility_ms(settings: Settings, samples: int) -> list[float]:
    """Commit through the write port, then poll the replica through the read port until seen."""
    db = settings.database
    common: dict[str, Any] = {
        "host": settings.listen_host,
        "user": db.app_user,
        "password": db.app_password.get_secret_value(),
        "dbname": db.name,
        "autocommit": True,
    }
    replica_port = settings.nodes[1].port
    results = []
    with (
        psycopg.connect(port=settings.haproxy.write_port, **common) as writer,
        psycopg.connect(port=replica_port, **common) as reader,
    ):
        writer.execute("CREATE TABLE IF NOT EXISTS visibility (id text PRIMARY KEY)")
        while reader.execute("SELECT to_regclass('visibility')").fetchone() == (None,):
            time.sleep(0.01)  # the table itself must reach the replica first
        for _ in range(samples):
            marker = str(uuid.uuid4())
            writer.execute("INSERT INTO visibility VALUES (%s)", (marker,))
            began = time.perf_counter()
            while not reader.execute(
                "SELECT 1 FROM visibility WHERE id = %s", (marker,)
            ).fetchone():
                time.sleep(0.0002)
            results.append((time.perf_counter() - began) * 1000)
    return results


def unix_write_listener(settings: Settings, layout: StateLayout, socket_dir: Path) -> str:
    """The platform's own HAProxy config, cut to its write listener, on unix sockets: the bind on
    `socket_dir`/.s.PGSQL.PORT (where libpq looks for a socket), each server on its PostgreSQL's
    socket with the REST check kept on the Patroni port (`check addr`). Global lines naming the
    platform HAProxy's own files (stats socket, server state) are left out."""
    text = "\n".join(
        line for line in render.haproxy_config(settings, layout).splitlines() if line[:1] != "#"
    )
    keep = [
        section
        for section in text.split("\n\n")
        if section.lstrip().startswith(("global", "defaults", "listen postgres_write"))
    ]
    config = "\n\n".join(keep) + "\n"
    config = "\n".join(
        line
        for line in config.splitlines()
        if not line.strip().startswith(("stats socket", "server-state-file", "load-server-state"))
    )
    port = settings.haproxy.write_port
    config = re.sub(r"bind \S+:\d+", f"bind unix@{socket_dir}/.s.PGSQL.{port}", config)
    run = layout.service_run

    def server(match: re.Match[str]) -> str:
        name, address, pg_port = match.group(1), match.group(2), match.group(3)
        return f"server {name} unix@{run}/.s.PGSQL.{pg_port} check addr {address}"

    config = re.sub(r"server (\S+) ([0-9.]+):(\d+) check", server, config)
    servers = [line for line in config.splitlines() if line.strip().startswith("server ")]
    if "bind unix@" not in config or not servers or any("unix@" not in x for x in servers):
        raise RuntimeError(f"the write listener was not moved onto unix sockets:\n{config}")
    return config + "\n"


@contextlib.contextmanager
def unix_haproxy(settings: Settings, layout: StateLayout) -> Iterator[Path]:
    """A second HAProxy (the bench's own, stopped by pid) with the write listener on a unix
    socket; yields the directory to give libpq as its host."""
    with tempfile.TemporaryDirectory(prefix="videodb-bench-unix-") as tmp:
        socket_dir = Path(tmp)
        config = socket_dir / "haproxy.cfg"
        config.write_text(unix_write_listener(settings, layout, socket_dir))
        proc = subprocess.Popen(
            [str(settings.haproxy.binary), "-db", "-f", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            probe = socket_dir / f".s.PGSQL.{settings.haproxy.write_port}"
            wait_for(
                lambda: probe.exists() or proc.poll() is not None,
                timeout=10,
                what="the unix-socket HAProxy",
            )
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the unix-socket HAProxy exited: {proc.stderr.read() if proc.stderr else ''}"
                )
            time.sleep(1.5)  # its first health checks mark the master up
            yield socket_dir
        finally:
            proc.terminate()
            proc.wait(timeout=10)


SELECT_ONLY = "SELECT abalance FROM pgbench_accounts WHERE aid = %s"  # pgbench -S's statement


Maker = Callable[[], Callable[[int], object]]  # per thread: a function of an account id


def threaded_tps(threads: int, seconds: float, make: Maker) -> float:
    """Statements per second over `threads` threads, each running its own `make()`'s function
    with a random pgbench account id, for `seconds`."""
    counts = [0] * threads
    start = threading.Barrier(threads + 1)
    stop = threading.Event()

    def run(index: int) -> None:
        op = make()
        rng = random.Random(index)
        start.wait()
        while not stop.is_set():
            op(rng.randint(1, 100_000))
            counts[index] += 1

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    start.wait()
    began = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for worker in workers:
        worker.join()
    return sum(counts) / (time.perf_counter() - began)


def layer_tps(settings: Settings, clients: int, seconds: float, rounds: int) -> dict[str, float]:
    """Through DataLayer.fetch() with each routing, and raw psycopg to the master, in rounds."""
    db = settings.database
    layers = {
        routing: DataLayer(
            DataSourceSettings.for_platform(
                settings, routing=routing, reader_pool_size=clients, min_idle=clients
            )
        )
        for routing in ("haproxy", "direct")
    }
    raw_conns: list[psycopg.Connection[tuple[Any, ...]]] = []
    lock = threading.Lock()

    def raw() -> Callable[[int], object]:
        conn = psycopg.connect(
            host=settings.listen_host,
            port=settings.nodes[0].port,
            user=db.app_user,
            password=db.app_password.get_secret_value(),
            dbname=db.name,
            autocommit=True,
        )
        with lock:
            raw_conns.append(conn)
        return lambda aid: conn.execute(SELECT_ONLY, (aid,)).fetchone()

    def through(layer: DataLayer) -> Maker:
        return lambda: lambda aid: layer.fetch(SELECT_ONLY, (aid,))

    makers: dict[str, Maker] = {
        "raw psycopg, direct to the master": raw,
        "fetch(), routing haproxy": through(layers["haproxy"]),
        "fetch(), routing direct": through(layers["direct"]),
    }
    try:
        for layer in layers.values():
            layer.warm()
        samples: dict[str, list[float]] = {name: [] for name in makers}
        for _ in range(rounds):
            for name, make in makers.items():
                samples[name].append(threaded_tps(clients, seconds, make))
                for conn in raw_conns:
                    conn.close()
                raw_conns.clear()
    finally:
        for layer in layers.values():
            layer.dispose()
    return {name: statistics.median(values) for name, values in samples.items()}


def print_ratios(title: str, figures: dict[str, float], base: str, unit: str) -> None:
    print(title)
    width = max(len(name) for name in figures)
    for name, value in figures.items():
        ratio = value / figures[base]
        print(f"  {name:{width}s} {value:10.0f} {unit}  ratio to {base} {ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with sandbox("videodb-bench-") as box:
        s = box.settings
        try:
            lifecycle.start(s, box.layout)
            pgbench(s, s.haproxy.write_port, ["-i", "-q", "-s", str(args.scale)])
            run = ["-n", "-S", "-c", str(args.clients), "-j", "2", "-T", str(args.seconds)]
            hosts = ",".join(s.node_address(n) for n in s.nodes)
            ports = ",".join(str(n.port) for n in s.nodes)
            plain = {"PGSSLMODE": "disable"}
            with unix_haproxy(s, box.layout) as haproxy_sockets:
                # name: (host, port, libpq environment)
                targets: dict[str, tuple[str | None, int | str, dict[str, str]]] = {
                    "direct master": (None, s.nodes[0].port, {}),
                    "direct master, no TLS": (None, s.nodes[0].port, plain),
                    "direct master, socket": (str(box.layout.service_run), s.nodes[0].port, {}),
                    "HAProxy read": (None, s.haproxy.read_port, {}),
                    "HAProxy write": (None, s.haproxy.write_port, {}),
                    "HAProxy write, no TLS": (None, s.haproxy.write_port, plain),
                    "HAProxy write, sockets": (str(haproxy_sockets), s.haproxy.write_port, {}),
                    # what routing = "direct" asks libpq for (videodb.db.layer.direct_targets)
                    "direct-routing writer": (
                        hosts,
                        ports,
                        {"PGTARGETSESSIONATTRS": "read-write"},
                    ),
                    "direct-routing reader": (
                        hosts,
                        ports,
                        {"PGTARGETSESSIONATTRS": "prefer-standby", "PGLOADBALANCEHOSTS": "random"},
                    ),
                }
                pgbench(s, s.nodes[0].port, ["-n", "-S", "-T", "2"])  # warm the caches
                # Rounds in turn, medians: a shared machine drifts within a run, and the order
                # of the targets must not decide the ratios.
                samples: dict[str, list[float]] = {name: [] for name in targets}
                for _ in range(args.rounds):
                    for name, (host, port, env) in targets.items():
                        samples[name].append(tps(pgbench(s, port, run, env, host)))
            figures = {name: statistics.median(values) for name, values in samples.items()}
            print_ratios(
                f"pgbench -n -S -c {args.clients} -j 2 -T {args.seconds}, scale {args.scale}, "
                f"median of {args.rounds} rounds:",
                figures,
                "direct master",
                "tps",
            )
            direct_gain = figures["direct master, socket"] / figures["direct master, no TLS"]
            proxy_gain = figures["HAProxy write, sockets"] / figures["HAProxy write, no TLS"]
            print(
                "  sockets against TCP without TLS (a unix socket carries no TLS): "
                f"direct {direct_gain:.2f}, HAProxy {proxy_gain:.2f}"
            )
            print_ratios(
                f"the same select in {args.clients} Python threads, {args.seconds} s each, "
                f"median of {args.rounds} rounds:",
                layer_tps(s, args.clients, args.seconds, args.rounds),
                "raw psycopg, direct to the master",
                "/s",
            )
            vis = sorted(visibility_ms(s, 200))
            p99 = vis[int(len(vis) * 0.99) - 1]
            print(
                f"write->replica visibility over 200 commits: median "
                f"{statistics.median(vis):.2f} ms, p99 {p99:.2f} ms, max {vis[-1]:.2f} ms"
            )
        finally:
            lifecycle.stop(s, box.layout)


if __name__ == "__main__":
    main()
