"""Benchmark: failover per whole-host fault on simulated hosts (network namespaces, as root).

    .venv/bin/python -m bench.multihost [--repeat 3] [--faults isolate-host,lose-host]

Builds the test harness's cluster (3 database/etcd hosts, 1 application host, synchronous
replication, the fast profile), then runs `failover-test --fault F --repeat N --json` on the
application host for each fault and prints the median and worst write downtime, read downtime and
time to heal, with the acknowledged, lost and in-doubt writes. Everything is removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import time

from tests.integration.multihost import APP_HOST, sim_cluster_lifecycle


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--faults", default="isolate-host,lose-host")
    args = parser.parse_args()
    began = time.monotonic()
    with sim_cluster_lifecycle() as sim:
        print(f"4 simulated hosts started and healthy in {time.monotonic() - began:.1f} s")
        header = "| fault | write downtime median | worst | read downtime median | worst |"
        print(header + " heal median | worst | acknowledged | lost | in doubt | two masters |")
        for fault in args.faults.split(","):
            result = sim.cli(
                APP_HOST, "failover-test", "--fault", fault, "--repeat", str(args.repeat),
                "--json", timeout=600 * args.repeat,
            )  # fmt: skip
            if not result.stdout.strip():
                print(f"| {fault} | failed: {result.stderr.strip()[-300:]} |")
                continue
            r = json.loads(result.stdout)
            w, rd, h = r["write_downtime_s"], r["read_downtime_s"], r["heal_s"]
            print(
                f"| {fault} | {w['median']:.2f} s | {w['worst']:.2f} s | {rd['median']:.2f} s "
                f"| {rd['worst']:.2f} s | {h['median']:.1f} s | {h['worst']:.1f} s "
                f"| {r['acknowledged']} | {r['lost_acknowledged']} | {r['in_doubt']} "
                f"| {'yes' if r['two_primaries'] else 'no'} |"
            )


if __name__ == "__main__":
    main()
