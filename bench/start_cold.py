"""Benchmark: `start video` from nothing (bootstrap, clone, HAProxy routing, the applications)
to healthy, with the monitoring off and on in the same run; and the monitoring's memory.

    .venv/bin/python -m bench.start_cold [--runs 3]

Each run uses a fresh state directory and free ports, and stops what it started. Runs alternate
monitoring off and on, so that both see the same machine. Also measures a warm start (the same
data directory, after `stop`), and the resident memory of every monitoring process once the
platform is up (with monitoring on).
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench.apps_throughput import rss_mib
from videodb.cluster import apps, lifecycle, monitoring
from videodb.cluster.supervisor import Supervisor
from videodb.config import Settings
from videodb.layout import StateLayout
from videodb.sandbox import sandbox

FAST = "enabled = true\n"  # the defaults: scrape every 10 s, retention 15 d


def start_video(settings: Settings, layout: StateLayout) -> float:
    """What 'platform.sh start video' does: the cluster, then the applications."""
    began = time.monotonic()
    lifecycle.start(settings, layout)
    apps.start_apps(settings, layout)
    return time.monotonic() - began


def memory_mib(layout: StateLayout) -> dict[str, float]:
    """Resident memory of each monitoring program, MiB."""
    found = {}
    names = {
        monitoring.PROMETHEUS,
        monitoring.ALERTMANAGER,
        monitoring.NODE_EXPORTER,
        monitoring.SCHEDULER,
    }
    for program in Supervisor(layout).programs():
        if program.pid and (program.name in names or program.name.endswith("-exporter")):
            found[program.name] = rss_mib(program.pid)
    return found


def one_run(watch: bool) -> tuple[float, float, dict[str, float]]:
    with sandbox("videodb-bench-", monitoring=FAST if watch else "enabled = false") as box:
        try:
            cold = start_video(box.settings, box.layout)
            time.sleep(15)  # a scrape or two: what Prometheus holds after start
            memory = memory_mib(box.layout) if watch else {}
            lifecycle.stop(box.settings, box.layout)
            warm = start_video(box.settings, box.layout)
        finally:
            lifecycle.stop(box.settings, box.layout)
    return cold, warm, memory


def summary(label: str, values: list[float]) -> str:
    return (
        f"{label}: median {statistics.median(values):.2f} s, min {min(values):.2f} s, "
        f"max {max(values):.2f} s ({len(values)} runs)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    results: dict[bool, tuple[list[float], list[float]]] = {False: ([], []), True: ([], [])}
    memories: list[dict[str, float]] = []
    for i in range(args.runs):
        for watch in (False, True):
            cold, warm, memory = one_run(watch)
            results[watch][0].append(cold)
            results[watch][1].append(warm)
            if memory:
                memories.append(memory)
            label = "on " if watch else "off"
            print(
                f"run {i + 1}, monitoring {label}: cold {cold:.2f} s, warm {warm:.2f} s",
                flush=True,
            )
    for watch in (False, True):
        label = "monitoring on" if watch else "monitoring off"
        print(summary(f"cold start video to healthy, {label}", results[watch][0]))
        print(summary(f"warm start video to healthy, {label}", results[watch][1]))
    added = statistics.median(results[True][0]) - statistics.median(results[False][0])
    print(f"the monitoring adds {added:+.2f} s to a cold start (medians)")
    if memories:
        names = sorted(memories[-1])
        total = 0.0
        for name in names:
            values = [m[name] for m in memories if name in m]
            total += statistics.median(values)
            print(f"memory {name}: median {statistics.median(values):.1f} MiB")
        print(f"memory of the monitoring in all: {total:.1f} MiB (medians summed)")


if __name__ == "__main__":
    main()
