"""Streaming service: a video's bytes with HTTP Range (206/416), a strong ETag (its SHA-256),
If-None-Match and If-Range; views are counted and written in batches."""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping

import anyio
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from videodb.db import DataLayer
from videodb.db.web import request_token
from videodb.services.base import create_app, json_error
from videodb.services.ranges import ByteRange, RangeNotSatisfiable, etag_matches, parse_range
from videodb.services.runtime import AppConfig
from videodb.services.storage import ByteReader, MissingBytesError, VideoStore
from videodb.services.stores import open_store
from videodb.services.videos import VideoOut, fetch_video, parse_id
from videodb.services.views import ViewCounter

DESCRIPTION = """Serves a video's bytes: `Range: bytes=...` gives 206 with Content-Range (416 when
unsatisfiable or malformed), `If-None-Match` with the ETag gives 304, `If-Range` sends the range
only if the video is unchanged. Pass the upload's consistency token to stream a video right after
uploading it. A view is counted for each request that starts at byte 0."""

CHUNK = 256 * 1024


class RecentVideos:
    """What a stream needs of a video (digest, size, type: none of them ever changes), kept for
    `ttl_s` so that a player's burst of range requests costs one database read, not one each.

    A video deleted meanwhile streams for at most `ttl_s` more, and only while its bytes are
    still stored (they go at once unless another video shares them).
    """

    def __init__(self, ttl_s: float = 5.0, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: OrderedDict[uuid.UUID, tuple[float, VideoOut]] = OrderedDict()

    def get(self, video_id: uuid.UUID) -> VideoOut | None:
        entry = self._entries.get(video_id)
        if entry is None or time.monotonic() - entry[0] > self.ttl_s:
            return None
        return entry[1]

    def put(self, video: VideoOut) -> None:
        self._entries[video.id] = (time.monotonic(), video)
        self._entries.move_to_end(video.id)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


def open_slice(store: VideoStore, sha256: str, start: int, length: int) -> tuple[ByteReader, bytes]:
    """Open the stored bytes and read the first chunk in the same worker-thread hop (a player's
    typical range is one chunk: one hop in all)."""
    reader = store.open_range(sha256, start, length)
    try:
        return reader, reader.read(CHUNK) if length else b""
    except BaseException:
        reader.close()
        raise


class StoreSlice(Response):
    """Sends a stored video's bytes: the first chunk read already, the rest chunk by chunk off
    the event loop."""

    def __init__(
        self,
        reader: ByteReader,
        first: bytes,
        length: int,
        status_code: int,
        headers: Mapping[str, str],
    ) -> None:
        super().__init__(status_code=status_code, headers=dict(headers))
        self.reader = reader
        self.first = first
        self.length = length

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            if scope["method"] == "HEAD" or self.length == 0:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            chunk, sent = self.first, 0
            while True:
                if not chunk:
                    raise RuntimeError(f"the stored bytes ended after {sent} of {self.length}")
                sent += len(chunk)
                await send(
                    {"type": "http.response.body", "body": chunk, "more_body": sent < self.length}
                )
                if sent >= self.length:
                    break
                chunk = await anyio.to_thread.run_sync(self.reader.read, CHUNK)
        finally:
            self.reader.close()  # a file descriptor, or a body back to its pool: no waiting


def build_app(config: AppConfig, layer: DataLayer | None = None) -> FastAPI:
    layer = layer or DataLayer(config.datasource)
    store = open_store(config.storage, config.max_upload_bytes)
    views = ViewCounter(layer, config.view_flush_s, layer.registry)

    async def close_store() -> None:
        store.close()

    app = create_app(
        "streaming",
        layer,
        description=DESCRIPTION,
        ready_on="reader",
        on_startup=[views.start],
        on_shutdown=[views.stop, close_store],
    )
    app.state.views = views
    recent = RecentVideos()

    @app.api_route(
        "/api/videos/{video_id}/stream",
        methods=["GET", "HEAD"],
        tags=["streaming"],
        summary="The video's bytes (Range, ETag, If-None-Match, If-Range)",
        response_class=Response,
        responses={
            200: {"description": "the whole video"},
            206: {"description": "the requested range"},
            304: {"description": "unchanged (If-None-Match)"},
            404: {"description": "no such video"},
            416: {"description": "range malformed or outside the video"},
        },
    )
    async def stream(video_id: str, request: Request) -> Response:
        vid = parse_id(video_id)
        token = request_token(request)
        video = recent.get(vid)
        if video is None:
            video = await run_in_threadpool(fetch_video, layer, vid, token)
            recent.put(video)
        size = video.size_bytes
        etag = f'"{video.sha256}"'
        headers = {
            "ETag": etag,
            "Accept-Ranges": "bytes",
            "Cache-Control": "private, max-age=3600",
            "Content-Type": video.content_type,
        }
        if etag_matches(request.headers.get("if-none-match"), etag, weak=True):
            kept = {k: headers[k] for k in ("ETag", "Cache-Control")}
            return Response(status_code=304, headers=kept)
        raw_range = request.headers.get("range")
        if_range = request.headers.get("if-range")
        if (
            raw_range is not None
            and if_range is not None
            and not etag_matches(if_range, etag, weak=False)
        ):
            raw_range = None  # changed since the client's copy (or a date): send it all
        try:
            wanted: ByteRange | None = parse_range(raw_range, size)
        except RangeNotSatisfiable as exc:
            return json_error(416, str(exc), {"Content-Range": f"bytes */{size}"})
        if request.method == "GET" and (wanted is None or wanted.start == 0):
            views.count(vid)
        start, length, status = (
            (0, size, 200) if wanted is None else (wanted.start, wanted.length, 206)
        )
        if wanted is not None:
            headers["Content-Range"] = wanted.content_range(size)
        headers["Content-Length"] = str(length)
        try:
            reader, first = await run_in_threadpool(
                open_slice, store, video.sha256, start, length if request.method == "GET" else 0
            )
        except MissingBytesError as exc:
            raise HTTPException(
                404, f"video {vid} is recorded but its bytes are not in storage: {exc}"
            ) from None
        return StoreSlice(reader, first, length, status, headers)

    @app.get(
        "/api/videos/{video_id}/poster",
        tags=["streaming"],
        summary="The video's poster (one frame, JPEG)",
        response_class=Response,
        responses={
            200: {"description": "a JPEG", "content": {"image/jpeg": {}}},
            404: {"description": "no such video, or it has no poster"},
        },
    )
    async def poster(video_id: str, request: Request) -> Response:
        vid = parse_id(video_id)
        video = recent.get(vid)
        if video is None:
            video = await run_in_threadpool(fetch_video, layer, vid, request_token(request))
            recent.put(video)
        jpeg = await run_in_threadpool(store.poster, video.sha256) if video.has_poster else None
        if jpeg is None:
            raise HTTPException(404, f"video {vid} has no poster (ffmpeg could not make one)")
        headers = {"Cache-Control": "private, max-age=86400", "ETag": f'"p-{video.sha256}"'}
        return Response(jpeg, media_type="image/jpeg", headers=headers)

    return app
