"""Benchmark: upload throughput, and streaming throughput and range latency, of the applications.

    .venv/bin/python -m bench.apps_throughput [--size-mb 64] [--runs 5] [--ranges 1000]

On one throwaway platform (free ports, temporary directory; 'start video' with the apps):
  upload      POST /api/videos of one file (multipart, streamed), to the upload port and through
              HAProxy's web port, against writing the same bytes to disk (64 KiB chunks + fsync,
              into the same storage directory): the ceiling.
  streaming   GET of the whole video from the streaming service, and random 64 KiB ranges one
              after another on one keep-alive connection, against a plain static file server
              (Starlette's StaticFiles under uvicorn, one process, which also honours Range) on
              the same file.
Medians of --runs; the ratios are what to compare across machines.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx

from videodb.cluster import apps, lifecycle
from videodb.ports import free_ports
from videodb.sandbox import sandbox
from videodb.waiting import wait_for

CHUNK = 256 * 1024
MP4_HEAD = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"


def serve_static(directory: str, port: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    app = Starlette(routes=[Mount("/", StaticFiles(directory=directory))])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def disk_write(path: Path, source: Path) -> float:
    """Seconds to copy `source` to `path` in 64 KiB chunks and fsync it."""
    began = time.perf_counter()
    with source.open("rb") as src, path.open("wb") as out:
        while chunk := src.read(64 * 1024):
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    elapsed = time.perf_counter() - began
    path.unlink()
    return elapsed


def multipart(source: Path, boundary: str) -> Iterator[bytes]:
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="title"\r\n\r\nbench\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="b.mp4"\r\n'
        "Content-Type: video/mp4\r\n\r\n"
    ).encode()
    with source.open("rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk
    yield f"\r\n--{boundary}--\r\n".encode()


def upload(client: httpx.Client, url: str, source: Path) -> tuple[float, dict[str, str]]:
    boundary = uuid.uuid4().hex
    began = time.perf_counter()
    response = client.post(
        url,
        content=multipart(source, boundary),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    elapsed = time.perf_counter() - began
    if response.status_code != 201:
        raise SystemExit(f"upload failed: {response.status_code} {response.text}")
    return elapsed, dict(response.json())


def full_get(client: httpx.Client, url: str, size: int) -> float:
    began = time.perf_counter()
    got = 0
    with client.stream("GET", url) as response:
        for chunk in response.iter_raw(CHUNK):
            got += len(chunk)
    elapsed = time.perf_counter() - began
    if got != size:
        raise SystemExit(f"GET {url}: {got} bytes, expected {size}")
    return elapsed


def range_latencies(client: httpx.Client, url: str, size: int, count: int) -> list[float]:
    rng = random.Random(7)
    samples = []
    for _ in range(count):
        start = rng.randrange(1, size - 65536)
        t0 = time.perf_counter()
        response = client.get(url, headers={"Range": f"bytes={start}-{start + 65535}"})
        samples.append((time.perf_counter() - t0) * 1000)
        if response.status_code != 206 or len(response.content) != 65536:
            raise SystemExit(f"range GET {url}: {response.status_code}")
    return sorted(samples)


def pct(samples: list[float], p: float) -> float:
    return samples[min(len(samples) - 1, int(len(samples) * p))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--ranges", type=int, default=1000)
    parser.add_argument("--serve-static", nargs=2, metavar=("DIR", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_static:
        serve_static(args.serve_static[0], int(args.serve_static[1]))
        return
    size = args.size_mb * 1024 * 1024
    with sandbox("videodb-bench-", apps=f"max_upload_mb = {args.size_mb + 1}\n") as box:
        s = box.settings
        source = box.workdir / "payload.mp4"
        source.write_bytes(MP4_HEAD + os.urandom(size - len(MP4_HEAD)))
        static: subprocess.Popen[bytes] | None = None
        try:
            lifecycle.start(s, box.layout)
            apps.start_apps(s, box.layout)
            host = s.listen_host
            up_url = f"http://{host}:{s.apps.upload_port}/api/videos"
            web_url = f"http://{host}:{s.apps.web_port}/api/videos"
            storage = s.apps.storage_dir or box.layout.root / "videos"
            with httpx.Client(timeout=300) as client:
                disk = [
                    disk_write(storage / "tmp" / "bench-copy", source) for _ in range(args.runs)
                ]
                direct = [upload(client, up_url, source)[0] for _ in range(args.runs)]
                proxied = [upload(client, web_url, source)[0] for _ in range(args.runs)]
                _, video = upload(client, up_url, source)
            mb = size / 1e6
            print(f"upload of {args.size_mb} MiB, median of {args.runs}:")
            base = mb / statistics.median(disk)
            for name, times in (
                ("disk write + fsync", disk),
                ("upload port", direct),
                ("web port (HAProxy)", proxied),
            ):
                rate = mb / statistics.median(times)
                print(f"  {name:20s} {rate:8.1f} MB/s  ({rate / base:.2f}x the disk write)")

            stream_url = f"http://{host}:{s.apps.streaming_port}{video['stream_url']}"
            sha = video["sha256"]
            assert sha == hashlib.sha256(source.read_bytes()).hexdigest()
            static_port = free_ports(1)[0]
            static = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.apps_throughput",
                    "--serve-static",
                    str(storage),
                    str(static_port),
                ]
            )
            static_url = f"http://{host}:{static_port}/{sha[:2]}/{sha[2:4]}/{sha}"
            with httpx.Client(timeout=300) as client:

                def static_up() -> bool:
                    try:
                        return client.head(static_url).status_code == 200
                    except httpx.TransportError:
                        return False

                wait_for(static_up, timeout=20, what="the static file server")
                print(f"whole-file GET of {args.size_mb} MiB, median of {args.runs}:")
                rates = {}
                for name, url in (("static file server", static_url), ("streaming", stream_url)):
                    full_get(client, url, size)  # page cache warm for both
                    times = [full_get(client, url, size) for _ in range(args.runs)]
                    rates[name] = mb / statistics.median(times)
                for name, rate in rates.items():
                    ratio = rate / rates["static file server"]
                    print(f"  {name:20s} {rate:8.1f} MB/s  ({ratio:.2f}x the static server)")
                print(f"{args.ranges} random 64 KiB ranges, one keep-alive client:")
                lat = {}
                for name, url in (("static file server", static_url), ("streaming", stream_url)):
                    range_latencies(client, url, size, 50)
                    lat[name] = range_latencies(client, url, size, args.ranges)
                for name, samples in lat.items():
                    p50 = statistics.median(samples)
                    ratio = p50 / statistics.median(lat["static file server"])
                    print(
                        f"  {name:20s} p50 {p50:6.2f} ms  p99 {pct(samples, 0.99):6.2f} ms  "
                        f"({ratio:.2f}x the static server's p50)"
                    )
        finally:
            if static is not None:
                static.terminate()
                static.wait(timeout=10)
            lifecycle.stop(s, box.layout)


if __name__ == "__main__":
    main()
