"""Benchmark: what clients of an etcd member see while it restarts, stopped by SIGTERM or SIGKILL.

    .venv/bin/python -m bench.etcd_stop_errors [--restarts 20] [--clients 4]

A real etcd (Debian's) on free loopback ports in a temporary directory; `--clients` threads send
the v3 gateway request Patroni sends most (`/v3/kv/range`) in a loop while the member is restarted
`--restarts` times with each signal. Printed per signal: answers that were fine, connection-level
failures (refused, reset: Patroni treats them as an etcd outage, which a paused Patroni rides
out), and error answers from the gateway (503 "transport is closing", 408: Patroni takes them for
a failed leader-lock update and stops calling itself the leader until its next loop, so HAProxy's
`/primary` check fails). `rotate ca` kills etcd for that reason (cluster/rotate.py).
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from videodb.ports import free_ports


def etcd(data: Path, client: int, peer: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            shutil.which("etcd") or "etcd",
            "--name=bench",
            f"--data-dir={data}",
            f"--listen-client-urls=http://127.0.0.1:{client}",
            f"--advertise-client-urls=http://127.0.0.1:{client}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=bench=http://127.0.0.1:{peer}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def one_request(url: str) -> str:
    request = urllib.request.Request(url, data=json.dumps({"key": "YQ=="}).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=2) as answer:
            return "fine" if b"header" in answer.read() else "error answer"
    except urllib.error.HTTPError:
        return "error answer"
    except OSError:  # refused, reset, timed out: the connection itself failed
        return "connection failed"


def measure(sig: signal.Signals, restarts: int, clients: int) -> collections.Counter[str]:
    client, peer = free_ports(2)
    url = f"http://127.0.0.1:{client}/v3/kv/range"
    counts: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    done = threading.Event()
    with tempfile.TemporaryDirectory(prefix="bench-etcd-") as tmp:
        proc = etcd(Path(tmp) / "data", client, peer)
        try:
            time.sleep(2)

            def hammer() -> None:
                while not done.is_set():
                    outcome = one_request(url)
                    with lock:
                        counts[outcome] += 1

            threads = [threading.Thread(target=hammer) for _ in range(clients)]
            for thread in threads:
                thread.start()
            for _ in range(restarts):
                time.sleep(0.5)
                proc.send_signal(sig)
                proc.wait()
                proc = etcd(Path(tmp) / "data", client, peer)
            time.sleep(1)
            done.set()
            for thread in threads:
                thread.join()
        finally:
            proc.kill()
            proc.wait()
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--restarts", type=int, default=20)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    print(f"{args.restarts} restarts per signal, {args.clients} clients sending /v3/kv/range")
    for sig in (signal.SIGTERM, signal.SIGKILL):
        counts = measure(sig, args.restarts, args.clients)
        print(
            f"{sig.name:8} fine {counts['fine']:6}  connection failed "
            f"{counts['connection failed']:6}  error answers {counts['error answer']:4}"
        )


if __name__ == "__main__":
    main()
