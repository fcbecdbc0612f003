"""Benchmark: what TLS costs on the proxy path, in one run on one cluster.

    .venv/bin/python -m bench.tls_cost [--seconds 10] [--clients 4] [--rounds 3] [--connects 200]

- pgbench -n -S through HAProxy's write port, plaintext (sslmode=disable, which loopback still
  allows) against TLS verify-full by the service name (what the applications use), alternated
  `--rounds` times; the medians and their ratio;
- connection setup: pgbench -C (a new connection for every transaction) the same two ways, and the
  median time of `--connects` psycopg connections (connect, SELECT 1, close) each way.
"""

from __future__ import annotations

import argparse
import statistics
import time

import psycopg

from bench.proxy_tps import pgbench, tps
from videodb.cluster import lifecycle
from videodb.config import Settings
from videodb.layout import tls_files
from videodb.sandbox import sandbox


def modes(settings: Settings, ca: str) -> dict[str, dict[str, str]]:
    return {
        "plaintext": {"PGSSLMODE": "disable"},
        "TLS verify-full": {
            "PGSSLMODE": "verify-full",
            "PGSSLROOTCERT": ca,
            "PGHOSTADDR": settings.address,
        },
    }


def connect_ms(settings: Settings, env: dict[str, str], count: int) -> float:
    db = settings.database
    tls = env["PGSSLMODE"] != "disable"
    params: dict[str, str | int] = {
        "host": settings.postgres_tls_name() if tls else settings.address,
        "port": settings.haproxy.write_port,
        "user": db.app_user,
        "password": db.app_password.get_secret_value(),
        "dbname": db.name,
        "sslmode": env["PGSSLMODE"],
    }
    if tls:
        params.update(hostaddr=env["PGHOSTADDR"], sslrootcert=env["PGSSLROOTCERT"])
    samples = []
    for _ in range(count):
        began = time.perf_counter()
        with psycopg.connect(**params) as conn:  # type: ignore[arg-type]
            conn.execute("SELECT 1")
        samples.append((time.perf_counter() - began) * 1000)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connects", type=int, default=200)
    args = parser.parse_args()
    with sandbox("videodb-bench-") as box:
        s = box.settings
        try:
            lifecycle.start(s, box.layout)
            port = s.haproxy.write_port
            pgbench(s, port, ["-i", "-q", "-s", str(args.scale)])
            ways = modes(s, str(tls_files(box.layout).ca))
            name = s.postgres_tls_name()

            def run(way: str, extra: list[str]) -> float:
                host = ["-h", name] if way != "plaintext" else []
                # pgbench's own -h is the listen host; a later -h wins: the service name for TLS
                argv = [*extra, *host]
                return tps(pgbench(s, port, argv, ways[way]))

            steady = ["-n", "-S", "-c", str(args.clients), "-j", "2", "-T", str(args.seconds)]
            setup = ["-n", "-S", "-C", "-c", str(args.clients), "-j", "2", "-T", str(args.seconds)]
            run("plaintext", ["-n", "-S", "-T", "2"])  # warm the caches
            figures: dict[str, dict[str, list[float]]] = {
                w: {"steady": [], "setup": []} for w in ways
            }
            for _ in range(args.rounds):
                for way in ways:
                    figures[way]["steady"].append(run(way, steady))
                    figures[way]["setup"].append(run(way, setup))
            median = {
                w: {k: statistics.median(v) for k, v in f.items()} for w, f in figures.items()
            }
            plain, tls = median["plaintext"], median["TLS verify-full"]
            print(
                f"pgbench through the write port, -c {args.clients} -j 2 -T {args.seconds}, "
                f"scale {args.scale}, median of {args.rounds} alternated rounds:"
            )
            for way, m in median.items():
                print(
                    f"  {way:16s} -S {m['steady']:8.0f} tps   -S -C (new connection each) "
                    f"{m['setup']:7.0f} tps"
                )
            print(
                f"  TLS/plaintext ratio: -S {tls['steady'] / plain['steady']:.2f}, "
                f"-S -C {tls['setup'] / plain['setup']:.2f}"
            )
            print(f"connection setup through the write port (psycopg, median of {args.connects}):")
            for way, env in ways.items():
                print(f"  {way:16s} {connect_ms(s, env, args.connects):6.2f} ms")
        finally:
            lifecycle.stop(s, box.layout)


if __name__ == "__main__":
    main()
