"""Benchmark: `start video` from nothing (bootstrap, clone, HAProxy routing) to healthy.

    .venv/bin/python -m bench.start_cold [--runs 3]

Each run uses a fresh state directory and free ports, and stops what it started. Also measures a
warm start (the same data directory, after `stop`).
"""

from __future__ import annotations

import argparse
import statistics
import time

from videodb.cluster import lifecycle
from videodb.sandbox import sandbox


def one_run() -> tuple[float, float]:
    with sandbox("videodb-bench-") as box:
        try:
            began = time.monotonic()
            lifecycle.start(box.settings, box.layout)
            cold = time.monotonic() - began
            lifecycle.stop(box.settings, box.layout)
            began = time.monotonic()
            lifecycle.start(box.settings, box.layout)
            warm = time.monotonic() - began
        finally:
            lifecycle.stop(box.settings, box.layout)
    return cold, warm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    colds, warms = [], []
    for i in range(args.runs):
        cold, warm = one_run()
        colds.append(cold)
        warms.append(warm)
        print(f"run {i + 1}: cold start {cold:.2f} s, warm start {warm:.2f} s", flush=True)
    print(
        f"cold start to healthy: median {statistics.median(colds):.2f} s, "
        f"min {min(colds):.2f} s, max {max(colds):.2f} s ({args.runs} runs)"
    )
    print(
        f"warm start to healthy: median {statistics.median(warms):.2f} s, "
        f"min {min(warms):.2f} s, max {max(warms):.2f} s ({args.runs} runs)"
    )


if __name__ == "__main__":
    main()
