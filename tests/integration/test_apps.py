"""The three applications on a real platform: upload a real video (ffmpeg), find it at once
through the metadata service, stream it with ranges, and refuse bad input leaving nothing behind.

The platform is the session's (started by 'platform.sh start video', which starts the apps), with
an upload limit of 16 MB and view counts written every 0.5 s. The suite runs three times: the
videos in a local directory with the applications on HAProxy's ports, the same with direct
routing, and the videos in SeaweedFS (started by the platform) through its S3 gateway. Each test
runs in the variants that change what it checks (`runs_in`).
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.harness import RunningCluster, set_apply_delay
from tests.media import make_noise_video, make_video
from videodb.backup_repo import BackupRepo
from videodb.db import DataLayer
from videodb.services.runtime import AppConfig
from videodb.services.s3_store import S3Store
from videodb.services.storage import StoredObject, VideoStore
from videodb.services.stores import open_store
from videodb.services.sweeper import Sweeper
from videodb.waiting import wait_for

pytestmark = pytest.mark.integration

TOKEN = "X-Consistency-Token"


VARIANTS = ("haproxy", "direct", "seaweedfs")
STORAGE_TABLE = "[storage]\n"


def restart_apps(cluster: RunningCluster, routing: str) -> None:
    cluster.cli("stop", "apps", check=True)
    cluster.cli("--set", f"apps.routing={routing}", "start", "apps", check=True, timeout=180)
    written = AppConfig.load(cluster.layout.apps_config()).datasource
    assert written.routing == routing and len(written.nodes) == 2


def use_storage(cluster: RunningCluster, backend: str) -> None:
    """Switch the platform's video store (its config file) and restart the applications: the
    first switch to SeaweedFS adds its servers to the running platform."""
    text = cluster.config_file.read_text()
    head, rest = text.split(STORAGE_TABLE, 1)
    rest = "\n".join(line for line in rest.split("\n") if not line.startswith("backend ="))
    cluster.config_file.write_text(f'{head}{STORAGE_TABLE}backend = "{backend}"\n{rest}')
    cluster.cli("stop", "apps", check=True)
    cluster.cli("start", "apps", check=True, timeout=180)
    assert AppConfig.load(cluster.layout.apps_config()).storage.backend == backend


@pytest.fixture(scope="module", params=VARIANTS, autouse=True)
def routing(request: pytest.FixtureRequest, cluster: RunningCluster) -> Iterator[str]:
    """The whole suite with the applications on HAProxy's ports (the default), then with direct
    routing (libpq multi-host to the nodes), then with the videos in SeaweedFS."""
    if request.param == "direct":
        restart_apps(cluster, "direct")
    if request.param == "seaweedfs":
        use_storage(cluster, "seaweedfs")
    try:
        yield str(request.param)
    finally:
        if request.param == "direct":
            restart_apps(cluster, "haproxy")
        if request.param == "seaweedfs":
            use_storage(cluster, "local")


def runs_in(routing: str, *variants: str) -> None:
    """Skip a test in the variants that do not change what it checks."""
    if routing not in variants:
        pytest.skip(f"checks nothing the {routing} variant changes (runs in {', '.join(variants)})")


@pytest.fixture
def store(cluster: RunningCluster, routing: str) -> Iterator[VideoStore]:
    """The store the applications use now (from their config file): local or SeaweedFS."""
    config = AppConfig.load(cluster.layout.apps_config())
    opened = open_store(config.storage, config.max_upload_bytes)
    try:
        yield opened
    finally:
        opened.close()


def stored_objects(store: VideoStore) -> set[tuple[str, str]]:
    return {(item.kind, item.name) for item in store.listing()}


def staged(store: VideoStore) -> list[StoredObject]:
    return [item for item in store.listing() if item.kind == "staged"]


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("media")
    return {kind: make_video(folder / f"sample.{kind}") for kind in ("mp4", "webm")}


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client


def upload(
    http: httpx.Client,
    cluster: RunningCluster,
    path: Path,
    *,
    title: str,
    tags: str = "",
    content_type: str | None = None,
    key: str | None = None,
    base: str = "upload",
    **headers: str,
) -> httpx.Response:
    kind = content_type or f"video/{path.suffix.lstrip('.')}"
    extra = {"Idempotency-Key": key} if key else {}
    extra.update({k.replace("_", "-"): v for k, v in headers.items()})
    with path.open("rb") as f:
        return http.post(
            f"{cluster.app_url(base)}/api/videos",
            files={"file": (path.name, f, kind)},
            data={"title": title, "tags": tags, "description": "made by ffmpeg for a test"},
            headers=extra,
        )


def video_count(cluster: RunningCluster) -> int:
    with cluster.app_connect(cluster.write_port) as conn:
        row = conn.execute("SELECT count(*) FROM videos").fetchone()
    assert row is not None
    return int(row[0])


def error_message(response: httpx.Response) -> str:
    body: dict[str, Any] = response.json()
    assert body["error"]["status"] == response.status_code
    return str(body["error"]["message"])


def test_a_plain_curl_upload_is_accepted(
    cluster: RunningCluster, media: dict[str, Path], routing: str
) -> None:
    """curl -F file=@clip.mp4 sends the part as application/octet-stream: judged by its bytes."""
    runs_in(routing, "haproxy", "seaweedfs")
    done = subprocess.run(
        [
            "curl",
            "--silent",
            "--show-error",
            "--fail-with-body",
            "-F",
            f"file=@{media['mp4']}",
            "-F",
            "title=sent with curl",
            f"{cluster.app_url('web')}/api/videos",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    video = httpx.Response(201, content=done.stdout).json()
    assert video["content_type"] == "video/mp4" and video["title"] == "sent with curl"
    streamed = httpx.get(f"{cluster.app_url('web')}/api/videos/{video['id']}/stream", timeout=30)
    assert streamed.content == media["mp4"].read_bytes()


def test_upload_is_found_at_once_and_streams_byte_for_byte(
    cluster: RunningCluster, http: httpx.Client, media: dict[str, Path], store: VideoStore
) -> None:
    """Read-your-writes across services: with a 2 s replay delay on the slave, the metadata and
    streaming services still find a video right after its upload when given the upload's token;
    without the token the slave does not have it yet."""
    data = media["mp4"].read_bytes()
    set_apply_delay(cluster, "2s")
    try:
        title = f"ryw {uuid.uuid4().hex[:8]}"
        created = upload(http, cluster, media["mp4"], title=title, tags="Cats, test")
        assert created.status_code == 201, created.text
        video = created.json()
        token = created.headers[TOKEN]
        assert video["sha256"] == hashlib.sha256(data).hexdigest()
        assert video["size_bytes"] == len(data) and video["content_type"] == "video/mp4"
        assert video["tags"] == ["cats", "test"]
        # What ffprobe read, and the poster ffmpeg made (stored beside the bytes).
        assert video["duration_s"] == pytest.approx(2.0, abs=0.1)
        assert (video["width"], video["height"]) == (320, 240)
        assert (video["video_codec"], video["audio_codec"]) == ("h264", "aac")
        assert video["has_poster"] and video["poster_url"] == f"/api/videos/{video['id']}/poster"
        assert store.exists(video["sha256"])
        poster = http.get(
            cluster.app_url("streaming") + video["poster_url"], headers={TOKEN: token}
        )
        assert poster.status_code == 200 and poster.headers["content-type"] == "image/jpeg"
        assert poster.content.startswith(b"\xff\xd8") and poster.content == store.poster(
            video["sha256"]
        )
        # Round robin over master and slave: ten searches reach the slave about five times.
        for _ in range(10):
            found = http.get(
                f"{cluster.app_url('metadata')}/api/videos",
                params={"q": title},
                headers={TOKEN: token},
            )
            assert found.status_code == 200, found.text
            assert [v["id"] for v in found.json()["items"]] == [video["id"]]
        # And the tokens mattered: the delayed slave does not have the video yet. (Asked directly:
        # which node the service's pooled reader connections reach depends on when HAProxy
        # opened them, e.g. all on the master after another module's failovers.)
        with cluster.app_connect(cluster.slave) as conn:
            row = conn.execute("SELECT count(*) FROM videos WHERE id = %s", (video["id"],))
            assert row.fetchone() == (0,), "the delayed slave should not have the video yet"
        stream = f"{cluster.app_url('streaming')}/api/videos/{video['id']}/stream"
        whole = http.get(stream, headers={TOKEN: token})
        assert whole.status_code == 200 and whole.content == data
        assert whole.headers["content-type"] == "video/mp4"
        assert whole.headers["etag"] == f'"{video["sha256"]}"'
    finally:
        set_apply_delay(cluster, None)

    size = len(data)
    for spec, (start, end) in {
        "bytes=0-99": (0, 99),
        f"bytes={size // 2}-{size // 2 + 4095}": (size // 2, size // 2 + 4095),
        "bytes=-500": (size - 500, size - 1),
        f"bytes={size - 10}-": (size - 10, size - 1),
        f"bytes=100-{size * 2}": (100, size - 1),
    }.items():
        part = http.get(stream, headers={"Range": spec})
        assert part.status_code == 206, (spec, part.text)
        assert part.content == data[start : end + 1], spec
        assert part.headers["content-range"] == f"bytes {start}-{end}/{size}"
        assert int(part.headers["content-length"]) == end - start + 1
    etag = whole.headers["etag"]
    assert http.get(stream, headers={"If-None-Match": etag}).status_code == 304
    same = http.get(stream, headers={"Range": "bytes=0-9", "If-Range": etag})
    assert same.status_code == 206 and same.content == data[:10]
    changed = http.get(stream, headers={"Range": "bytes=0-9", "If-Range": '"other"'})
    assert changed.status_code == 200 and changed.content == data
    head = http.head(stream)
    assert head.status_code == 200 and int(head.headers["content-length"]) == size


def test_the_web_port_routes_every_api_and_the_cookie_carries_the_token(
    cluster: RunningCluster, media: dict[str, Path], routing: str
) -> None:
    runs_in(routing, "haproxy", "seaweedfs")
    with httpx.Client(timeout=30) as browser_like:  # keeps cookies, like a browser
        title = f"web {uuid.uuid4().hex[:8]}"
        created = upload(browser_like, cluster, media["webm"], title=title, base="web")
        assert created.status_code == 201, created.text
        cookie = browser_like.cookies.get("consistency_token") or ""
        assert cookie.strip('"') == created.headers[TOKEN]  # quoted: it holds a slash
        web = cluster.app_url("web")
        listed = browser_like.get(f"{web}/api/videos", params={"q": title})
        assert [v["title"] for v in listed.json()["items"]] == [title]
        stream = browser_like.get(
            web + created.json()["stream_url"], headers={"Range": "bytes=0-3"}
        )
        assert stream.status_code == 206 and stream.content == b"\x1a\x45\xdf\xa3"
        poster = browser_like.get(web + created.json()["poster_url"])
        assert poster.status_code == 200 and poster.headers["content-type"] == "image/jpeg"
        page = browser_like.get(f"{web}/")
        assert page.status_code == 200 and "<video" in page.text


def test_bad_input_gets_a_clear_4xx_and_leaves_nothing(
    cluster: RunningCluster,
    http: httpx.Client,
    media: dict[str, Path],
    tmp_path: Path,
    store: VideoStore,
    routing: str,
) -> None:
    runs_in(routing, "haproxy", "seaweedfs")
    up = f"{cluster.app_url('upload')}/api/videos"
    objects_before = stored_objects(store)
    count_before = video_count(cluster)
    limit = cluster.settings.apps.max_upload_mb * 1024 * 1024
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text_file = tmp_path / "notes.mp4"
    text_file.write_text("this is not a video at all\n" * 100)
    big = tmp_path / "big.mp4"  # just over the limit: passes the Content-Length check
    big.write_bytes(media["mp4"].read_bytes()[:64] + b"\x00" * limit)
    huge = tmp_path / "huge.mp4"  # far over: refused from its Content-Length
    huge.write_bytes(b"\x00" * (limit + 2 * 1024 * 1024))
    broken = tmp_path / "broken.mp4"  # an MP4's first bytes, then noise: ffprobe cannot read it
    broken.write_bytes(media["mp4"].read_bytes()[:32] + uuid.uuid4().bytes * 2000)
    cases: list[tuple[httpx.Response, int, str]] = [
        (http.post(up, files={"title": (None, "no file")}), 400, "no 'file' part"),
        (http.post(up, data={"title": "a form"}), 415, "multipart/form-data"),
        (upload(http, cluster, empty, title="empty"), 422, "empty"),
        (upload(http, cluster, big, title="big"), 413, "larger than the limit"),
        (upload(http, cluster, huge, title="huge"), 413, "larger than the limit"),
        (
            upload(http, cluster, media["mp4"], title="png", content_type="image/png"),
            415,
            "not accepted",
        ),
        (upload(http, cluster, text_file, title="text"), 415, "does not look like a video"),
        (upload(http, cluster, broken, title="broken"), 415, "cannot be read as a video"),
        (
            http.post(up, content=b"raw bytes", headers={"Content-Type": "video/mp4"}),
            415,
            "multipart/form-data",
        ),
        (upload(http, cluster, media["mp4"], title=""), 400, "title"),
        (
            upload(http, cluster, media["mp4"], title="sha", X_Content_SHA256="0" * 64),
            422,
            "SHA-256 mismatch",
        ),
        (
            http.get(f"{cluster.app_url('metadata')}/api/videos/{uuid.uuid4()}"),
            404,
            "no video",
        ),
        (http.get(f"{cluster.app_url('metadata')}/api/videos/not-an-id"), 404, "UUIDs"),
        (
            http.get(f"{cluster.app_url('streaming')}/api/videos/{uuid.uuid4()}/stream"),
            404,
            "no video",
        ),
        (
            http.patch(
                f"{cluster.app_url('metadata')}/api/videos/{uuid.uuid4()}", json={"title": "x"}
            ),
            404,
            "no video",
        ),
        (
            http.get(f"{cluster.app_url('metadata')}/api/videos", headers={TOKEN: "1:zz"}),
            400,
            "malformed consistency token",
        ),
        (
            http.get(f"{cluster.app_url('metadata')}/api/videos", params={"limit": 0}),
            422,
            "limit",
        ),
    ]
    for response, status, message in cases:
        assert response.status_code == status, (status, message, response.text)
        assert message in error_message(response), (message, response.text)
    # A client that goes away in the middle of its upload, after a whole multipart part (8 MiB,
    # storage.part_mb) was sent: what was staged (a temporary file, a multipart upload) goes.
    body = media["mp4"].read_bytes() + b"\x00" * (9 * 1024 * 1024)
    with socket.create_connection(("127.0.0.1", cluster.settings.apps.upload_port)) as gone:
        gone.sendall(
            b"POST /api/videos HTTP/1.1\r\nHost: x\r\nContent-Length: 15000000\r\n"
            b"Content-Type: multipart/form-data; boundary=B\r\n\r\n--B\r\n"
            b'Content-Disposition: form-data; name="file"; filename="v.mp4"\r\n'
            b"Content-Type: video/mp4\r\n\r\n" + body
        )
        wait_for(lambda: bool(staged(store)), timeout=10, what="the interrupted upload staged")
    wait_for(
        lambda: not staged(store),
        timeout=10,
        what="the interrupted upload's staged bytes removed",
    )
    assert stored_objects(store) == objects_before, "a refused upload left something behind"
    assert video_count(cluster) == count_before, "a refused upload left a row behind"

    created = upload(http, cluster, media["webm"], title="ranges")
    stream = f"{cluster.app_url('streaming')}{created.json()['stream_url']}"
    size = created.json()["size_bytes"]
    for bad in ("bytes=abc", "bytes=5-1", "pages=1-2x", "bytes=-0", f"bytes={size}-"):
        refused = http.get(stream, headers={"Range": bad})
        if bad.startswith("pages"):  # another unit: ignored, as RFC 9110 says
            assert refused.status_code == 200
            continue
        assert refused.status_code == 416, (bad, refused.text)
        assert refused.headers["content-range"] == f"bytes */{size}"
        assert "Range" in error_message(refused)


def test_a_plain_upload_right_after_a_switchover_succeeds(
    cluster: RunningCluster, http: httpx.Client, media: dict[str, Path], routing: str
) -> None:
    """HAProxy cut the upload app's pooled writer connections at the switchover: the next
    upload, with no Idempotency-Key, must get a live connection, not a 503."""
    runs_in(routing, "haproxy", "direct")
    before = upload(http, cluster, media["mp4"], title="before the switchover")
    assert before.status_code == 201, before.text
    master = cluster.cli_json("status")
    old = next(s["name"] for s in master["services"] if s["role"] == "primary")
    try:
        assert cluster.cli("switchover", timeout=120).rc == 0
        # The apps' pools held connections the switchover cut: readiness is not fooled by them.
        ready = {
            s["name"]: s["detail"] for s in cluster.cli_json("status", expect_rc=None)["services"]
        }
        assert all(ready[app] == "ready" for app in ("upload", "metadata", "streaming")), ready
        after = upload(http, cluster, media["mp4"], title="after the switchover")
        assert after.status_code == 201, after.text
    finally:
        back = cluster.cli("switchover", "--to", old, timeout=120)
        assert back.rc == 0, back


def test_idempotency_key_returns_the_same_video_and_refuses_another_file(
    cluster: RunningCluster, http: httpx.Client, media: dict[str, Path]
) -> None:
    key = f"k-{uuid.uuid4()}"
    title = f"once {key}"  # the suite runs twice (both routings) on one database
    first = upload(http, cluster, media["mp4"], title=title, key=key)
    again = upload(http, cluster, media["mp4"], title=title, key=key)
    assert first.status_code == again.status_code == 201
    assert again.headers.get("idempotent-replayed") == "true"
    assert "idempotent-replayed" not in first.headers
    assert again.json()["id"] == first.json()["id"]
    other = upload(http, cluster, media["webm"], title="other", key=key)
    assert other.status_code == 422 and "another file" in error_message(other)
    with cluster.app_connect(cluster.write_port) as conn:
        row = conn.execute("SELECT count(*) FROM videos WHERE title = %s", (title,)).fetchone()
    assert row == (1,)


def test_metadata_lists_filters_updates_and_deletes(
    cluster: RunningCluster,
    http: httpx.Client,
    media: dict[str, Path],
    tmp_path: Path,
    store: VideoStore,
) -> None:
    tag = f"t{uuid.uuid4().hex[:8]}"
    meta = f"{cluster.app_url('metadata')}/api/videos"
    # Bytes of this test's own (a real MP4 with a unique tail), so that no other test's upload
    # shares them and the last delete really removes the file.
    own = {"mp4": tmp_path / "own.mp4", "webm": media["webm"]}
    own["mp4"].write_bytes(media["mp4"].read_bytes() + uuid.uuid4().bytes)
    ids = []
    token = ""
    for i, (kind, words) in enumerate(
        [("mp4", "sunset over the harbour"), ("webm", "harbour cranes"), ("mp4", "mountain")]
    ):
        created = upload(http, cluster, own[kind], title=f"{words} {i}", tags=f"{tag}, n{i}")
        assert created.status_code == 201, created.text
        ids.append(created.json()["id"])
        token = created.headers[TOKEN]
    auth = {TOKEN: token}
    page1 = http.get(meta, params={"tag": tag, "limit": 2, "sort": "oldest"}, headers=auth).json()
    page2 = http.get(
        meta, params={"tag": tag, "limit": 2, "offset": 2, "sort": "oldest"}, headers=auth
    ).json()
    assert page1["total"] == page2["total"] == 3
    assert [v["id"] for v in page1["items"] + page2["items"]] == ids
    harbour = http.get(meta, params={"q": "harbour", "tag": tag}, headers=auth).json()
    assert {v["id"] for v in harbour["items"]} == set(ids[:2])
    webm = http.get(meta, params={"tag": tag, "content_type": "video/webm"}, headers=auth).json()
    assert [v["id"] for v in webm["items"]] == [ids[1]]

    changed = http.patch(f"{meta}/{ids[2]}", json={"title": "glacier", "tags": [tag, "ice"]})
    assert changed.status_code == 200, changed.text
    after = http.get(meta, params={"q": "glacier"}, headers={TOKEN: changed.headers[TOKEN]})
    assert [v["id"] for v in after.json()["items"]] == [ids[2]]
    assert http.patch(f"{meta}/{ids[2]}", json={}).status_code == 422

    # ids[0] and ids[2] share their bytes: deleting one keeps the file, deleting both removes it.
    sha = http.get(f"{meta}/{ids[0]}", headers=auth).json()["sha256"]
    same_bytes = http.get(meta, params={"tag": tag}, headers=auth).json()["items"]
    sharing = [v for v in same_bytes if v["sha256"] == sha]
    assert len(sharing) == 2
    deleted = http.delete(f"{meta}/{ids[0]}")
    assert deleted.status_code == 204 and store.exists(sha)
    gone = http.get(f"{meta}/{ids[0]}", headers={TOKEN: deleted.headers[TOKEN]})
    assert gone.status_code == 404
    http.delete(f"{meta}/{ids[2]}")
    # The last video with those bytes is gone, and so are they and their poster.
    assert not store.exists(sha) and store.poster(sha) is None


def test_views_are_counted_in_batches(
    cluster: RunningCluster, http: httpx.Client, media: dict[str, Path], routing: str
) -> None:
    runs_in(routing, "haproxy", "direct")
    created = upload(http, cluster, media["webm"], title="views")
    video = created.json()
    stream = f"{cluster.app_url('streaming')}{video['stream_url']}"
    auth = {TOKEN: created.headers[TOKEN]}

    def flushes() -> float:
        text = http.get(f"{cluster.app_url('streaming')}/metrics").text
        for line in text.splitlines():
            if line.startswith("videodb_view_flushes_total "):
                return float(line.split()[1])
        raise AssertionError("videodb_view_flushes_total not in /metrics")

    before = flushes()
    began = time.monotonic()
    starts = 40
    for i in range(starts):
        headers = {**auth, "Range": "bytes=0-1023"} if i % 2 else auth
        assert http.get(stream, headers=headers).status_code in (200, 206)
    for _ in range(20):  # the player's later ranges are not views
        assert http.get(stream, headers={**auth, "Range": "bytes=2048-4095"}).status_code == 206

    def counted() -> bool:
        row = http.get(
            f"{cluster.app_url('metadata')}/api/videos/{video['id']}", headers=auth
        ).json()
        return bool(row["views"] == starts)

    wait_for(counted, timeout=20, what=f"{starts} views written")
    writes = flushes() - before
    intervals = (time.monotonic() - began) / cluster.settings.apps.view_flush_s
    # Batched: at most one write per flush interval, however many views (and however fast or
    # slow the machine sends them).
    assert 1 <= writes <= intervals + 1, f"{writes} view writes in {intervals:.1f} intervals"


def test_operations_endpoints_status_logs_and_stopping_the_apps(
    cluster: RunningCluster, routing: str
) -> None:
    runs_in(routing, "haproxy", "seaweedfs")
    with httpx.Client(timeout=10) as http:
        for service in ("upload", "metadata", "streaming"):
            base = cluster.app_url(service)
            assert http.get(f"{base}/healthz").json() == {"status": "ok", "service": service}
            assert http.get(f"{base}/readyz").status_code == 200
            assert "videodb_http_requests_total" in http.get(f"{base}/metrics").text
            assert http.get(f"{base}/docs").status_code == 200
            assert "/api/videos" in str(http.get(f"{base}/openapi.json").json()["paths"])
        status = cluster.cli_json("status")
        apps = {s["name"]: s for s in status["services"] if s["role"] == "app"}
        assert set(apps) == {"upload", "metadata", "streaming"}
        assert all(s["healthy"] and s["state"] == "RUNNING" for s in apps.values())
        logs = cluster.cli("logs", "metadata", "-n", "50", check=True)
        assert "Uvicorn running" in logs.stdout or "GET /" in logs.stdout, logs

        stopped = cluster.cli_json("stop", "apps")
        assert set(stopped["stopped"]) == {"upload", "metadata", "streaming"}
        down = cluster.cli_json("status", expect_rc=1)
        assert {s["name"] for s in down["services"] if not s["healthy"]} == set(apps)
        refused = http.get(f"{cluster.app_url('web')}/api/videos")
        assert refused.status_code == 503 and "not running" in error_message(refused)

        # A port taken while the apps were down: a clear refusal, then a clean start.
        with socket.socket() as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", cluster.settings.apps.metadata_port))
            squatter.listen()
            blocked = cluster.cli("start", "apps")
            assert blocked.rc != 0
            assert f"port {cluster.settings.apps.metadata_port} (metadata app) is in use" in (
                blocked.stderr
            ), blocked
        started = cluster.cli_json("start", "apps")
        assert all(s["ready"] for s in started["apps"]), started
        wait_for(
            lambda: http.get(f"{cluster.app_url('web')}/api/videos").status_code == 200,
            timeout=10,
            what="the web port routing to the metadata app again",
        )
        assert cluster.cli("status").rc == 0


def test_the_sweeper_removes_orphans_after_their_grace_and_never_a_live_video(
    cluster: RunningCluster,
    http: httpx.Client,
    media: dict[str, Path],
    store: VideoStore,
    routing: str,
) -> None:
    """Bytes no row names (an upload that died between its bytes and its row) and staged
    uploads go once older than the grace period; a live video's bytes and poster stay."""
    runs_in(routing, "haproxy", "seaweedfs")
    live = upload(http, cluster, media["webm"], title=f"live {uuid.uuid4().hex[:6]}")
    assert live.status_code == 201, live.text
    live_sha = live.json()["sha256"]
    orphan = store.save([media["mp4"].read_bytes() + uuid.uuid4().bytes], "video/mp4")
    store.put_poster(orphan.sha256, b"\xff\xd8 an orphan's poster")
    left = store.begin("video/mp4")  # an upload a crash left staged
    left.write(media["mp4"].read_bytes())
    left.finish()
    config = AppConfig.load(cluster.layout.apps_config())
    layer = DataLayer(config.datasource)
    try:
        sweeper = Sweeper(layer, store, grace_s=600)
        young = sweeper.sweep()  # everything is younger than the grace period: kept
        assert young.removed == [] and store.exists(orphan.sha256)
        later = datetime.now(UTC) + timedelta(seconds=601)
        done = sweeper.sweep(now=later)
    finally:
        layer.dispose()
        left.discard()
    removed = {(item.kind, item.name) for item in done.removed}
    assert {("video", orphan.sha256), ("poster", orphan.sha256)} <= removed
    assert any(kind == "staged" for kind, _ in removed)
    assert not store.exists(orphan.sha256) and store.poster(orphan.sha256) is None
    assert store.exists(live_sha) and store.poster(live_sha) is not None
    assert not any(name == live_sha for _, name in removed)
    stream = http.get(cluster.app_url("streaming") + live.json()["stream_url"])
    assert stream.status_code == 200 and stream.content == media["webm"].read_bytes()


def test_a_volume_server_killed_mid_stream_leaves_the_stream_whole(
    cluster: RunningCluster, http: httpx.Client, tmp_path: Path, routing: str
) -> None:
    """Every object is on two SeaweedFS volume servers: one SIGKILLed while a video streams,
    the stream goes on from the other, byte for byte."""
    runs_in(routing, "seaweedfs")
    big = make_noise_video(tmp_path / "noise.mp4", seconds=2.2)
    data = big.read_bytes()
    assert 8 * 1024 * 1024 < len(data) <= cluster.settings.apps.max_upload_mb * 1024 * 1024
    created = upload(http, cluster, big, title="noise")
    assert created.status_code == 201, created.text
    url = cluster.app_url("streaming") + created.json()["stream_url"]
    supervisor = cluster.supervisor()
    victim = supervisor.program("seaweedfs-volume-1")
    assert victim.pid is not None and victim.running
    received = bytearray()
    with http.stream("GET", url) as response:
        assert response.status_code == 200
        chunks = response.iter_bytes(64 * 1024)
        received += next(chunks)
        os.kill(victim.pid, signal.SIGKILL)
        for chunk in chunks:
            received += chunk
    assert len(received) == len(data) and bytes(received) == data
    # supervisord brings the volume server back; the video streams whole again.
    wait_for(
        lambda: supervisor.program("seaweedfs-volume-1").running,
        timeout=30,
        what="the killed volume server restarted by supervisord",
    )
    again = http.get(url, headers={"Range": f"bytes={len(data) - 4096}-"})
    assert again.status_code == 206 and again.content == data[-4096:]


def test_video_backups_copy_verify_and_put_back(
    cluster: RunningCluster,
    http: httpx.Client,
    media: dict[str, Path],
    tmp_path: Path,
    store: VideoStore,
    routing: str,
) -> None:
    """backup-video copies the bytes the repository lacks (checked by digest); verify reads them
    again and refuses a damaged copy; restore puts back what the store lost and names the videos
    whose bytes are in neither place."""
    runs_in(routing, "seaweedfs")
    made = []
    for name in ("kept", "lost"):
        own = tmp_path / f"{name}.mp4"
        own.write_bytes(media["mp4"].read_bytes() + uuid.uuid4().bytes)
        created = upload(http, cluster, own, title=f"backup {name} {uuid.uuid4().hex[:6]}")
        assert created.status_code == 201, created.text
        made.append(created.json())
    kept, lost = made
    taken = cluster.cli_json("backup-video")
    assert {kept["sha256"], lost["sha256"]} <= set(taken["extra"]["videos"])
    assert taken["videos"]["copied"] >= 2, taken["videos"]
    repo = BackupRepo(cluster.layout.backups)
    copy = repo.video_path(kept["sha256"])
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == kept["sha256"]
    verified = cluster.cli("backup", "verify", taken["id"], timeout=300)
    assert verified.rc == 0 and "video copies ok" in verified.stdout, verified

    good = copy.read_bytes()
    copy.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    try:
        damaged = cluster.cli("backup", "verify", taken["id"], timeout=300)
        assert damaged.rc == 1 and f"{kept['sha256']} (damaged)" in damaged.stderr, damaged
    finally:
        copy.write_bytes(good)

    # The store loses both videos' bytes; the repository loses the second's too.
    store.remove(kept["sha256"])
    store.remove(lost["sha256"])
    repo.video_path(lost["sha256"]).unlink()
    target = f"restored_{uuid.uuid4().hex[:8]}"
    restored = cluster.cli("restore", taken["id"], "--database", target, "--force", timeout=300)
    try:
        assert restored.rc == 1, restored
        assert "put back the bytes of 1" in restored.stdout, restored
        named = [line for line in restored.stderr.splitlines() if "neither in the store" in line]
        assert len(named) == 1 and named[0].startswith("1 restored video(s)"), restored
        assert lost["id"] in named[0] and kept["id"] not in named[0]
    finally:
        cluster.cli("shell-video", "-c", f"DROP DATABASE IF EXISTS {target}", check=True)
    assert store.exists(kept["sha256"]) and store.poster(kept["sha256"]) is not None
    stream = http.get(cluster.app_url("streaming") + kept["stream_url"])
    assert stream.status_code == 200
    assert hashlib.sha256(stream.content).hexdigest() == kept["sha256"]
    gone = http.get(cluster.app_url("streaming") + lost["stream_url"])
    assert gone.status_code == 404 and "not in storage" in error_message(gone)


def test_any_s3_endpoint_by_configuration_alone(
    cluster: RunningCluster, http: httpx.Client, media: dict[str, Path], routing: str
) -> None:
    """backend = "s3" names an endpoint, a bucket, a prefix and keys, and nothing else changes:
    here SeaweedFS's gateway stands for a cloud bucket."""
    runs_in(routing, "seaweedfs")
    gateway = AppConfig.load(cluster.layout.apps_config()).storage.s3
    assert gateway is not None
    original = cluster.config_file.read_text()
    head, rest = original.split(STORAGE_TABLE, 1)
    rest = "\n".join(line for line in rest.split("\n") if not line.startswith("backend ="))
    external = (
        'backend = "s3"\n'
        f'endpoint = "{gateway.endpoint}"\n'
        'bucket = "elsewhere"\n'
        'prefix = "tenant-a/"\n'
        f'access_key = "{gateway.access_key}"\n'
    )
    cluster.config_file.write_text(f"{head}{STORAGE_TABLE}{external}{rest}")
    secret = {"VIDEODB__STORAGE__SECRET_KEY": gateway.secret_key.get_secret_value()}
    try:
        started = cluster.cli_with_env(secret, "start", "apps", timeout=180)
        assert started.rc == 0 and "restarting" in started.stderr, started
        config = AppConfig.load(cluster.layout.apps_config())
        assert config.storage.backend == "s3" and config.storage.s3 is not None
        created = upload(http, cluster, media["webm"], title=f"elsewhere {uuid.uuid4().hex[:6]}")
        assert created.status_code == 201, created.text
        streamed = http.get(cluster.app_url("streaming") + created.json()["stream_url"])
        assert streamed.content == media["webm"].read_bytes()
        store = open_store(config.storage, config.max_upload_bytes)
        try:
            assert store.exists(created.json()["sha256"])
            assert isinstance(store, S3Store)
            keys = store.client.list_objects_v2(Bucket="elsewhere", Prefix="tenant-a/videos/")
            names = [item["Key"] for item in keys.get("Contents", [])]
            assert f"tenant-a/videos/{created.json()['sha256']}" in names
        finally:
            store.close()
    finally:
        cluster.config_file.write_text(original)
        use_storage(cluster, "seaweedfs")
