"""Content-addressed storage (the local backend): digests, limits, types, nothing left behind on
failure, and what the sweeper sees."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from videodb.services.local_store import LocalStore
from videodb.services.storage import StorageError, StoredObject, sniff_content_type

MP4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + bytes(range(256)) * 40
WEBM = b"\x1a\x45\xdf\xa3" + b"\x00" * 500


def chunks(data: bytes, size: int = 1000) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def leftovers(store: LocalStore) -> list[Path]:
    return [p for p in (store.root / "tmp").iterdir()]


def test_stores_by_digest_once(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, max_bytes=1 << 20)
    first = store.save(chunks(MP4), "video/mp4")
    assert first.sha256 == hashlib.sha256(MP4).hexdigest()
    path = store.path_for(first.sha256)
    assert path.read_bytes() == MP4 and first.size_bytes == len(MP4)
    assert first.content_type == "video/mp4" and store.exists(first.sha256)
    mtime = path.stat().st_mtime_ns
    again = store.save(chunks(MP4, 7), "video/mp4", expected_sha256=first.sha256.upper())
    assert again == first and path.stat().st_mtime_ns == mtime  # the stored copy is kept
    assert leftovers(store) == []
    reader = store.open_range(first.sha256, 10, 100)
    try:
        assert reader.read(60) + reader.read(60) + reader.read(60) == MP4[10:110]
    finally:
        reader.close()


@pytest.mark.parametrize(
    ("data", "declared", "status", "message"),
    [
        (b"", "video/mp4", 422, "empty"),
        (MP4, "image/png", 415, "not accepted"),
        (b"just some text, not a video", "video/mp4", 415, "does not look like a video"),
        (MP4 * 100, "video/mp4", 413, "larger than the limit"),
        # A generic type is judged by the bytes: a declared non-video type is not.
        (b"just some text, not a video", "application/octet-stream", 415, "does not look like"),
        (b"just some text, not a video", None, 415, "does not look like a video"),
        (MP4, "text/plain", 415, "not accepted"),
    ],
)
def test_bad_uploads_are_refused_and_leave_nothing(
    tmp_path: Path, data: bytes, declared: str | None, status: int, message: str
) -> None:
    store = LocalStore(tmp_path, max_bytes=100_000)
    with pytest.raises(StorageError, match=message) as info:
        store.save(chunks(data), declared)
    assert info.value.status == status
    assert leftovers(store) == []
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("declared", ["application/octet-stream", None, "Video/MP4"])
def test_a_generic_or_missing_type_is_taken_from_the_bytes(
    tmp_path: Path, declared: str | None
) -> None:
    """curl -F file=@clip.mp4 sends application/octet-stream; some clients send no type."""
    store = LocalStore(tmp_path, max_bytes=1 << 20)
    stored = store.save(chunks(MP4), declared)
    assert stored.content_type == "video/mp4"
    assert store.path_for(stored.sha256).read_bytes() == MP4
    assert leftovers(store) == []


def test_digest_mismatch_is_refused(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, max_bytes=1 << 20)
    with pytest.raises(StorageError, match="SHA-256 mismatch") as info:
        store.save(chunks(WEBM), "video/webm", expected_sha256="0" * 64)
    assert info.value.status == 422
    assert leftovers(store) == []


def test_sniffing_recognises_the_containers() -> None:
    assert sniff_content_type(MP4[:16]) == "video/mp4"
    assert sniff_content_type(b"\x00\x00\x00\x14ftypqt  \x00\x00") == "video/quicktime"
    assert sniff_content_type(WEBM[:16]) == "video/webm"
    assert sniff_content_type(b"OggS\x00\x02") == "video/ogg"
    assert sniff_content_type(b"GIF89a") is None


def test_listing_names_videos_posters_and_staged_uploads(tmp_path: Path) -> None:
    store = LocalStore(tmp_path, max_bytes=1 << 20)
    stored = store.save(chunks(MP4), "video/mp4")
    store.put_poster(stored.sha256, b"\xff\xd8 a jpeg")
    pending = store.begin("video/mp4")
    pending.write(MP4[:100])
    try:
        kinds = {(item.kind, item.name) for item in store.listing()}
        staged = [item for item in store.listing() if item.kind == "staged"]
        assert ("video", stored.sha256) in kinds and ("poster", stored.sha256) in kinds
        assert len(staged) == 1
        store.remove_object(staged[0])
        assert not [item for item in store.listing() if item.kind == "staged"]
    finally:
        pending.discard()
    assert store.poster(stored.sha256) == b"\xff\xd8 a jpeg"
    store.remove_object(StoredObject("video", stored.sha256, staged[0].modified))
    assert not store.exists(stored.sha256)
    store.remove(stored.sha256)
    assert store.poster(stored.sha256) is None
