"""Benchmark: write downtime per fault (failover-test drills) and sync versus async write TPS.

    .venv/bin/python -m bench.failover [--repeat 3] [--faults kill-postgres,switchover,...]
                                        [--seconds 10] [--profile fast] [--stop-poll 1,0.25]

One throwaway cluster (free ports, temporary directory) with synchronous replication runs every
drill `--repeat` times and prints the median and worst write and read downtime per fault. Then
pgbench -N (4 clients) through the write port measures write TPS with replication async and sync,
switched on the same cluster, as a ratio (`--seconds 0` leaves it out). `--stop-poll` takes a list
of `patroni.stop_poll_s` values and runs the drills once per value, each on its own cluster, in
one run (1 is Patroni's own shutdown poll; the platform's default is 0.25).
"""

from __future__ import annotations

import argparse
import statistics

from bench.proxy_tps import pgbench, tps
from videodb.cluster import lifecycle
from videodb.cluster.drill import FAULTS, HOST_FAULTS, run_drills
from videodb.cluster.ha import apply_dynamic_config
from videodb.cluster.health import check_health, sync_standby_chosen
from videodb.config import Settings
from videodb.sandbox import sandbox
from videodb.secrets import ClusterSecrets, load_secrets
from videodb.waiting import wait_for


def with_replication(settings: Settings, mode: str) -> Settings:
    return settings.model_copy(
        update={"patroni": settings.patroni.model_copy(update={"replication": mode})}
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    single_host = [f for f in FAULTS if f not in HOST_FAULTS]  # bench.multihost for the others
    parser.add_argument("--faults", default=",".join(single_host))
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--profile", default="fast")
    parser.add_argument("--stop-poll", default="", help="patroni.stop_poll_s values, e.g. 1,0.25")
    args = parser.parse_args()
    polls: list[float | None] = [float(v) for v in args.stop_poll.split(",") if v] or [None]
    for i, poll in enumerate(polls):
        extra = f'[patroni]\nreplication = "sync"\nprofile = "{args.profile}"\n'
        if poll is not None:
            extra += f"stop_poll_s = {poll}\n"
        last = i == len(polls) - 1
        run_cluster(extra, args.faults.split(","), args.repeat, args.seconds if last else 0)


def run_cluster(extra: str, faults: list[str], repeat: int, seconds: int) -> None:
    with sandbox("videodb-bench-", extra=extra) as box:
        s = box.settings
        try:
            lifecycle.start(s, box.layout)
            secrets = load_secrets(box.layout)
            ttl, loop_wait, retry = s.patroni.timings()
            print(
                f"profile {s.patroni.profile}: ttl {ttl}, loop_wait {loop_wait}, retry {retry}, "
                f"stop poll {s.patroni.stop_poll_s:g} s"
            )
            for fault in faults:
                report = run_drills(s, box.layout, secrets, fault, repeat=repeat)
                writes = [r.write_downtime_s for r in report.runs]
                reads = [r.read_downtime_s for r in report.runs]
                lost = sum(r.lost_acknowledged for r in report.runs)
                acked = sum(r.acknowledged for r in report.runs)
                split = any(r.two_primaries for r in report.runs)
                healed = all(r.healed for r in report.runs)
                spans = [r.unprotected_s for r in report.runs if r.unprotected_s is not None]
                unprotected = f"median {statistics.median(spans):.2f} s" if spans else "-"
                print(
                    f"{fault:14s} write downtime median {statistics.median(writes):6.2f} s, "
                    f"worst {max(writes):6.2f} s | read downtime median "
                    f"{statistics.median(reads):5.2f} s, worst {max(reads):5.2f} s | "
                    f"acked {acked}, lost {lost}, two masters {split}, healed {healed}, "
                    f"read-only answers {sum(r.read_only_writes for r in report.runs)}, "
                    f"unprotected {unprotected} ({repeat} runs)",
                    flush=True,
                )
            if seconds > 0:
                write_tps(s, secrets, seconds)
        finally:
            lifecycle.stop(s, box.layout)


def write_tps(s: Settings, secrets: ClusterSecrets, seconds: int) -> None:
    pgbench(s, s.haproxy.write_port, ["-i", "-q", "-s", "10"])
    run = ["-n", "-N", "-c", "4", "-j", "2", "-T", str(seconds)]
    figures: dict[str, float] = {}
    for mode in ("async", "sync", "async", "sync"):
        apply_dynamic_config(with_replication(s, mode), secrets)
        if mode == "sync":
            wait_for(lambda: sync_standby_chosen(s), timeout=30, what="a sync standby")
        wait_for(lambda: check_health(s, require_sync=False).healthy, timeout=60, what="ok")
        value = tps(pgbench(s, s.haproxy.write_port, run))
        figures[mode] = max(figures.get(mode, 0.0), value)
        print(f"pgbench -N through the write port, {mode}: {value:.0f} tps", flush=True)
    print(
        f"best of two: async {figures['async']:.0f} tps, sync {figures['sync']:.0f} tps, "
        f"sync/async ratio {figures['sync'] / figures['async']:.2f}"
    )


if __name__ == "__main__":
    main()
