"""Benchmark: upload throughput, and streaming throughput and range latency, of the applications,
with the videos in the local directory and in SeaweedFS (S3), in one run.

    .venv/bin/python -m bench.apps_throughput [--size-mb 64] [--runs 5] [--ranges 1000]

On one throwaway platform (free ports, temporary directory; 'start video' with the apps and
SeaweedFS; the applications restarted for the other backend):
  upload      POST /api/videos of one real video (ffmpeg noise, --size-mb; multipart, streamed),
              to the upload port and through HAProxy's web port. Baselines: local, writing the
              same bytes to disk (64 KiB chunks + fsync, into the storage directory); SeaweedFS,
              boto3's own upload_file of the file to the same gateway (multipart, 8 MiB parts).
  streaming   GET of the whole video, and random 64 KiB ranges one after another on one
              keep-alive connection. Baselines: local, a plain static file server (Starlette's
              StaticFiles under uvicorn, one process, which honours Range) on the stored file;
              SeaweedFS, boto3's get_object (whole, and with Range) on the stored object.
Medians of --runs; the ratios are what to compare across machines. An upload now includes
ffprobe and the poster (ffmpeg), which the baselines do not do.
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
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
from boto3.s3.transfer import TransferConfig

from videodb.cluster import apps, lifecycle
from videodb.cluster.render import APP_PROGRAMS as APPS
from videodb.cluster.supervisor import Supervisor
from videodb.config import Settings
from videodb.layout import StateLayout
from videodb.ports import free_ports
from videodb.sandbox import sandbox
from videodb.services.local_store import LocalStore
from videodb.services.runtime import AppConfig
from videodb.services.s3_store import S3Store
from videodb.services.stores import open_store
from videodb.waiting import wait_for

CHUNK = 256 * 1024


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


def ranged_get(client: httpx.Client, url: str, start: int) -> None:
    response = client.get(url, headers={"Range": f"bytes={start}-{start + 65535}"})
    if response.status_code != 206 or len(response.content) != 65536:
        raise SystemExit(f"range GET {url}: {response.status_code}")


def range_latencies(get: Callable[[int], None], size: int, count: int) -> list[float]:
    rng = random.Random(7)
    samples = []
    for _ in range(count):
        start = rng.randrange(1, size - 65536)
        t0 = time.perf_counter()
        get(start)
        samples.append((time.perf_counter() - t0) * 1000)
    return sorted(samples)


def pct(samples: list[float], p: float) -> float:
    return samples[min(len(samples) - 1, int(len(samples) * p))]


def make_payload(path: Path, size_mb: int) -> None:
    """A real MP4 of about `size_mb` MiB: incompressible noise (x264 at about 5.8 MB/s)."""
    seconds = max(1.0, size_mb * 1024 * 1024 / 5.8e6)
    subprocess.run(
        [
            "ffmpeg",
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"nullsrc=size=640x360:rate=25:duration={seconds:.2f},noise=alls=100:allf=t+u",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-crf",
            "10",
            "-pix_fmt",
            "yuv420p",
            str(path),
        ],
        check=True,
        timeout=600,
    )


def report(title: str, rows: dict[str, float], unit: str, base: str) -> None:
    print(title)
    for name, value in rows.items():
        print(f"  {name:26s} {value:8.1f} {unit}  ({value / rows[base]:.2f}x {base})")


def measure_backend(
    backend: str,
    settings: Settings,
    layout: StateLayout,
    source: Path,
    args: argparse.Namespace,
) -> None:
    """Restart the applications on `backend`, then upload, GET and range against baselines."""
    wanted = settings.model_copy(
        update={"storage": settings.storage.model_copy(update={"backend": backend})}
    )
    apps.stop_apps(layout)
    apps.start_apps(wanted, layout)
    config = AppConfig.load(layout.apps_config())
    store = open_store(config.storage, config.max_upload_bytes)
    size = source.stat().st_size
    mb = size / 1e6
    host = settings.listen_host
    up_url = f"http://{host}:{settings.apps.upload_port}/api/videos"
    web_url = f"http://{host}:{settings.apps.web_port}/api/videos"
    static: subprocess.Popen[bytes] | None = None
    print(f"== backend {backend}: {store.describe()}")
    try:
        with httpx.Client(timeout=300) as client:
            if isinstance(store, LocalStore):
                base_name = "disk write + fsync"
                baseline = [
                    disk_write(store.root / "tmp" / "bench-copy", source) for _ in range(args.runs)
                ]
            else:
                assert isinstance(store, S3Store)
                base_name = "boto3 upload_file"
                baseline = [s3_upload(store, source) for _ in range(args.runs)]
            direct = [upload(client, up_url, source)[0] for _ in range(args.runs)]
            proxied = [upload(client, web_url, source)[0] for _ in range(args.runs)]
            _, video = upload(client, up_url, source)
        report(
            f"upload of {mb:.1f} MB, median of {args.runs}:",
            {
                base_name: mb / statistics.median(baseline),
                "upload port": mb / statistics.median(direct),
                "web port (HAProxy)": mb / statistics.median(proxied),
            },
            "MB/s",
            base_name,
        )
        stream_url = f"http://{host}:{settings.apps.streaming_port}{video['stream_url']}"
        sha = video["sha256"]
        assert sha == hashlib.sha256(source.read_bytes()).hexdigest()
        with httpx.Client(timeout=300) as client:
            whole: dict[str, Callable[[], float]] = {
                "streaming": lambda: full_get(client, stream_url, size)
            }
            ranged: dict[str, Callable[[int], None]] = {
                "streaming": lambda start: ranged_get(client, stream_url, start)
            }
            if isinstance(store, LocalStore):
                base_name = "static file server"
                static_port = free_ports(1)[0]
                static = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "bench.apps_throughput",
                        "--serve-static",
                        str(store.root),
                        str(static_port),
                    ]
                )
                static_url = f"http://{host}:{static_port}/{sha[:2]}/{sha[2:4]}/{sha}"

                def static_up() -> bool:
                    try:
                        return client.head(static_url).status_code == 200
                    except httpx.TransportError:
                        return False

                wait_for(static_up, timeout=20, what="the static file server")
                whole[base_name] = lambda: full_get(client, static_url, size)
                ranged[base_name] = lambda start: ranged_get(client, static_url, start)
            else:
                assert isinstance(store, S3Store)
                base_name = "boto3 get_object"
                whole[base_name] = lambda: s3_get(store, sha, size)
                ranged[base_name] = lambda start: s3_range(store, sha, start)
            rates = {}
            for name, fetch in whole.items():
                fetch()  # caches warm for both
                rates[name] = mb / statistics.median([fetch() for _ in range(args.runs)])
            report(
                f"whole-file GET, median of {args.runs}:",
                dict(reversed(list(rates.items()))),
                "MB/s",
                base_name,
            )
            print(f"{args.ranges} random 64 KiB ranges, one keep-alive client:")
            lat = {}
            for name, get in reversed(list(ranged.items())):
                range_latencies(get, size, 50)  # warm up
                lat[name] = range_latencies(get, size, args.ranges)
            for name, samples in lat.items():
                p50 = statistics.median(samples)
                ratio = p50 / statistics.median(lat[base_name])
                print(
                    f"  {name:26s} p50 {p50:6.2f} ms  p99 {pct(samples, 0.99):6.2f} ms  "
                    f"({ratio:.2f}x {base_name}'s p50)"
                )
    finally:
        store.close()
        if static is not None:
            static.terminate()
            static.wait(timeout=10)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def s3_upload(store: S3Store, source: Path) -> float:
    config = TransferConfig(multipart_chunksize=store.settings.part_bytes, max_concurrency=1)
    began = time.perf_counter()
    store.client.upload_file(
        str(source), store.bucket, store.key("staging", "bench"), Config=config
    )
    return time.perf_counter() - began


def s3_get(store: S3Store, sha: str, size: int) -> float:
    began = time.perf_counter()
    body = store.client.get_object(Bucket=store.bucket, Key=store.key("videos", sha))["Body"]
    got = sum(len(chunk) for chunk in iter(lambda: body.read(CHUNK), b""))
    elapsed = time.perf_counter() - began
    if got != size:
        raise SystemExit(f"get_object: {got} bytes, expected {size}")
    return elapsed


def s3_range(store: S3Store, sha: str, start: int) -> None:
    answer = store.client.get_object(
        Bucket=store.bucket, Key=store.key("videos", sha), Range=f"bytes={start}-{start + 65535}"
    )
    if len(answer["Body"].read()) != 65536:
        raise SystemExit("ranged get_object: short read")


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
    limit = f"max_upload_mb = {args.size_mb * 2}\n"
    with sandbox("videodb-bench-", apps=limit, storage='backend = "seaweedfs"\n') as box:
        source = box.workdir / "payload.mp4"
        make_payload(source, args.size_mb)
        try:
            lifecycle.start(box.settings, box.layout)
            for backend in ("local", "seaweedfs"):
                measure_backend(backend, box.settings, box.layout, source, args)
            print("memory (RSS) after the runs:")
            for program in Supervisor(box.layout).programs():
                if program.pid and (program.name.startswith("seaweedfs") or program.name in APPS):
                    print(f"  {program.name:26s} {rss_mib(program.pid):8.1f} MiB")
        finally:
            lifecycle.stop(box.settings, box.layout)


if __name__ == "__main__":
    main()
