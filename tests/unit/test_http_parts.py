"""The pieces of the services that need no server: Range parsing, ETag matching, the streaming
multipart parser."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from videodb.services.form_stream import FormError, FormStream
from videodb.services.local_store import LocalStore
from videodb.services.ranges import ByteRange, RangeNotSatisfiable, etag_matches, parse_range
from videodb.services.storage import StorageError
from videodb.services.views import ViewCounter

SIZE = 1000


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-99", ByteRange(0, 99)),
        ("bytes=990-", ByteRange(990, 999)),
        ("bytes=-10", ByteRange(990, 999)),
        ("bytes=-5000", ByteRange(0, 999)),
        ("bytes=500-5000", ByteRange(500, 999)),
        (" bytes = 1 - 2 ", ByteRange(1, 2)),
        ("bytes=0-1,5-6", None),  # several ranges: the whole file
        ("items=0-1", None),  # another unit: ignored
    ],
)
def test_ranges(header: str | None, expected: ByteRange | None) -> None:
    assert parse_range(header, SIZE) == expected


@pytest.mark.parametrize(
    ("header", "why"),
    [
        ("bytes=abc", "malformed"),
        ("bytes=-", "malformed"),
        ("bytes=5-1", "end is before the start"),
        ("bytes=1000-", "starts at or after the end"),
        ("bytes=-0", "no bytes"),
        ("0-10", "malformed"),
    ],
)
def test_bad_ranges(header: str, why: str) -> None:
    with pytest.raises(RangeNotSatisfiable, match=why):
        parse_range(header, SIZE)


def test_content_range() -> None:
    assert ByteRange(10, 19).content_range(SIZE) == "bytes 10-19/1000"
    assert ByteRange(10, 19).length == 10


def test_etags() -> None:
    tag = '"abc"'
    assert etag_matches('"x", "abc"', tag, weak=True)
    assert etag_matches('W/"abc"', tag, weak=True)
    assert not etag_matches('W/"abc"', tag, weak=False)  # If-Range compares strongly
    assert etag_matches("*", tag, weak=True)
    assert not etag_matches(None, tag, weak=True)
    assert not etag_matches('"abd"', tag, weak=False)


MP4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + bytes(range(256)) * 20


def body(parts: list[tuple[str, bytes, str | None]], boundary: str = "XyZ") -> bytes:
    out = b""
    for name, value, kind in parts:
        out += f"--{boundary}\r\n".encode()
        if kind is None:
            out += f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        else:
            out += (
                f'Content-Disposition: form-data; name="{name}"; filename="v"\r\n'
                f"Content-Type: {kind}\r\n\r\n"
            ).encode()
        out += value + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def feed(store: LocalStore, data: bytes, chunk: int = 7) -> FormStream:
    form = FormStream(store, "multipart/form-data; boundary=XyZ")
    for i in range(0, len(data), chunk):
        form.feed(data[i : i + chunk])
    return form


def test_form_streams_the_file_and_collects_fields(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, 1 << 20)
    data = body(
        [("title", b"Caf\xc3\xa9", None), ("file", MP4, "video/mp4"), ("tags", b"a,b", None)]
    )
    form = feed(store, data)
    pending = form.close()
    stored = pending.finish()
    assert form.fields == {"title": "Café", "tags": "a,b"}
    assert stored.size_bytes == len(MP4) and stored.content_type == "video/mp4"
    pending.publish()
    assert store.path_for(stored.sha256).read_bytes() == MP4
    form.discard()
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.parametrize(
    ("parts", "status", "message"),
    [
        ([("title", b"x", None)], 400, "no 'file' part"),
        ([("file", MP4, "video/mp4"), ("file", MP4, "video/mp4")], 400, "more than one"),
        ([("file", MP4, "text/plain")], 415, "not accepted"),
        ([("title", b"x" * 70_000, None), ("file", MP4, "video/mp4")], 400, "longer than"),
    ],
)
def test_form_refusals_leave_nothing(
    tmp_path: Path, parts: list[tuple[str, bytes, str | None]], status: int, message: str
) -> None:
    store = LocalStore(tmp_path, 1 << 20)
    form: FormStream | None = None
    with pytest.raises(StorageError, match=message) as info:
        form = FormStream(store, "multipart/form-data; boundary=XyZ")
        data = body(parts)
        for i in range(0, len(data), 4096):
            form.feed(data[i : i + 4096])
        form.close()
    assert info.value.status == status
    if form is not None:
        form.discard()
    assert list((tmp_path / "tmp").iterdir()) == []


def test_form_content_type_and_truncation(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, 1 << 20)
    with pytest.raises(StorageError, match="multipart/form-data") as info:
        FormStream(store, "application/json")
    assert info.value.status == 415
    with pytest.raises(FormError, match="boundary"):
        FormStream(store, "multipart/form-data")
    truncated = body([("file", MP4, "video/mp4")])[:-20]
    form = feed(store, truncated, 100)
    with pytest.raises(FormError, match="ended early"):
        form.close()
    form.discard()
    assert list((tmp_path / "tmp").iterdir()) == []


class _FlakyWriter:
    """Stands in for DataLayer.writer(): fails while `down`, records what it was asked to run."""

    def __init__(self) -> None:
        self.down = True
        self.batches: list[dict[str, Any]] = []

    @contextmanager
    def writer(self) -> Iterator[Any]:
        if self.down:
            raise OSError("connection refused")
        calls = self.batches

        class Session:
            def execute(self, _: object, params: dict[str, Any]) -> None:
                calls.append(params)

        class Unit:
            session = Session()

        yield Unit()


def test_views_are_kept_until_written_once() -> None:
    fake = _FlakyWriter()
    views = ViewCounter(fake, 1.0, CollectorRegistry())  # type: ignore[arg-type]
    a, b = uuid.uuid4(), uuid.uuid4()
    for _ in range(3):
        views.count(a)
    views.count(b)
    assert views.flush() == 0  # the database is down: kept
    views.count(a)
    fake.down = False
    assert views.flush() == 5
    (batch,) = fake.batches  # one statement for the whole tally
    assert dict(zip(batch["ids"], batch["ns"], strict=True)) == {str(a): 4, str(b): 1}
    assert views.flush() == 0 and len(fake.batches) == 1


def test_every_error_is_json_even_an_unexpected_one() -> None:
    from fastapi.testclient import TestClient

    from videodb.db import DataLayer, DataSourceSettings
    from videodb.services.base import create_app

    layer = DataLayer(DataSourceSettings(writer_port=1, reader_port=1))
    app = create_app("upload", layer, description="test", ready_on="writer")

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("a bug")

    client = TestClient(app, raise_server_exceptions=False)
    crashed = client.get("/boom")
    assert crashed.status_code == 500
    assert crashed.json()["error"]["message"].startswith("internal error (RuntimeError)")
    assert "platform.sh logs upload" in crashed.json()["error"]["message"]
    missing = client.get("/nowhere")
    assert missing.status_code == 404 and missing.json()["error"]["status"] == 404
    not_ready = client.get("/readyz")  # nothing listens on port 1
    assert not_ready.status_code == 503 and "writer port not reachable" in not_ready.text
    layer.dispose()


def test_only_a_retryable_database_error_is_a_503() -> None:
    """A lost connection or a replica that is read-only: 503, retry. A constraint: 500."""
    import psycopg
    from fastapi.testclient import TestClient
    from psycopg import errors as pg_errors

    from videodb.db import DataLayer, DataSourceSettings
    from videodb.services.base import create_app

    layer = DataLayer(DataSourceSettings(writer_port=1, reader_port=1))
    app = create_app("metadata", layer, description="test", ready_on="writer")

    @app.get("/unique")
    def unique() -> None:
        raise pg_errors.UniqueViolation("duplicate key value violates unique constraint")

    @app.get("/lost")
    def lost() -> None:
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    @app.get("/read-only")
    def read_only() -> None:
        raise pg_errors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction")

    client = TestClient(app, raise_server_exceptions=False)
    refused = client.get("/unique")
    assert refused.status_code == 500 and "Retry-After" not in refused.headers
    assert "the database refused the request" in refused.json()["error"]["message"]
    for path in ("/lost", "/read-only"):
        busy = client.get(path)
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "1", path
        assert "retry in a moment" in busy.json()["error"]["message"]
    layer.dispose()


def test_old_idempotency_keys_are_pruned_at_start_and_then_periodically() -> None:
    """The upload service's expiry: once at start, every interval, a database error retried."""
    import asyncio
    from typing import cast

    import psycopg

    from videodb.db import DataLayer
    from videodb.services.expiry import IdempotencyExpiry

    class FakeLayer:
        def __init__(self) -> None:
            self.calls: list[float] = []

        def prune_idempotency(self, older_than_s: float) -> int:
            self.calls.append(older_than_s)
            if len(self.calls) == 2:
                raise psycopg.OperationalError("the master went away")
            return 3

    layer = FakeLayer()
    expiry = IdempotencyExpiry(cast(DataLayer, layer), ttl_s=86_400, interval_s=0.01)

    async def run() -> None:
        await expiry.start()
        while len(layer.calls) < 4:
            await asyncio.sleep(0.005)
        await expiry.stop()

    asyncio.run(asyncio.wait_for(run(), timeout=10))
    assert layer.calls[:4] == [86_400] * 4  # the failed second prune did not stop the third
