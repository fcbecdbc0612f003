"""Upload service: POST /api/videos (multipart) streams the file into content-addressed storage
and records the video through the writer; an Idempotency-Key makes a retry return the same video."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Annotated, Any

from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import Counter
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.orm import Session
from starlette.requests import ClientDisconnect

from videodb.db import ConsistencyToken, DataLayer
from videodb.db.web import publish_token
from videodb.services.base import create_app, error_body
from videodb.services.expiry import IdempotencyExpiry
from videodb.services.form_stream import FormError, FormStream
from videodb.services.media import MediaInfo, poster, probe
from videodb.services.models import Video
from videodb.services.runtime import AppConfig
from videodb.services.storage import PendingUpload, StoredFile, VideoStore
from videodb.services.stores import open_store
from videodb.services.sweeper import Sweeper, lock_digest
from videodb.services.videos import Description, Tags, Title, VideoOut, parse_tags

DESCRIPTION = """Uploads a video (multipart/form-data): the `file` field plus `title`, optional
`description` and `tags` (comma-separated). The bytes stream into storage under their SHA-256
(send `X-Content-SHA256` to have them checked); ffprobe reads the duration, size and codecs (a
file it cannot read as a video is refused with 415 and nothing is kept) and ffmpeg makes a
poster; the video is recorded through the write port.

Send an `Idempotency-Key` header to make a retry safe: the same key returns the same video (201,
with `Idempotent-Replayed: true`), never a second one. The response carries the read-your-writes
token (`X-Consistency-Token` header and cookie): pass it to the metadata and streaming services
to read the new video at once, even from a replica."""

# Slack over the file limit for the multipart framing and the text fields.
FORM_OVERHEAD = 1024 * 1024
_TITLE: TypeAdapter[str] = TypeAdapter(Title)
_DESCRIPTION: TypeAdapter[str] = TypeAdapter(Description)
_TAGS: TypeAdapter[list[str]] = TypeAdapter(Tags)


def _validated(fields: dict[str, str]) -> tuple[str, str, list[str]]:
    problems = []
    values: dict[str, object] = {}
    checks: list[tuple[str, TypeAdapter[Any], object]] = [
        ("title", _TITLE, fields.get("title", "")),
        ("description", _DESCRIPTION, fields.get("description", "")),
        ("tags", _TAGS, parse_tags(fields.get("tags", ""))),
    ]
    for name, adapter, raw in checks:
        try:
            values[name] = adapter.validate_python(raw)
        except ValidationError as exc:
            problems += [
                f"{name}{''.join(f'[{p}]' for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            ]
    if problems:
        raise FormError("invalid form fields: " + "; ".join(problems))
    return str(values["title"]), str(values["description"]), list(values["tags"])  # type: ignore[call-overload]


def build_app(config: AppConfig, layer: DataLayer | None = None) -> FastAPI:
    layer = layer or DataLayer(config.datasource)
    store: VideoStore = open_store(config.storage, config.max_upload_bytes)
    expiry = IdempotencyExpiry(layer, config.idempotency_ttl_s)
    sweeper = Sweeper(layer, store, config.storage.sweep_grace_s)

    async def close_store() -> None:
        store.close()

    app = create_app(
        "upload",
        layer,
        description=DESCRIPTION,
        ready_on="writer",
        on_startup=[expiry.start, sweeper.start],
        on_shutdown=[expiry.stop, sweeper.stop, close_store],
    )
    app.state.expiry = expiry
    app.state.sweeper = sweeper
    app.state.store = store
    uploaded_bytes = Counter(
        "videodb_upload_bytes_total", "Bytes of accepted uploads", registry=layer.registry
    )
    refused = Counter(
        "videodb_upload_refused_total",
        "Refused uploads by status",
        ["status"],
        registry=layer.registry,
    )

    def examine(pending: PendingUpload, expected: str | None) -> tuple[StoredFile, MediaInfo]:
        """Check the staged bytes, read them with ffprobe, store a poster (keyed by digest:
        the same bytes stored before keep theirs)."""
        stored = pending.finish(expected)
        source = pending.media_source()
        info = probe(source)
        has_poster = store.poster(stored.sha256) is not None
        if not has_poster:
            jpeg = poster(source, info)
            if jpeg is not None:
                store.put_poster(stored.sha256, jpeg)
                has_poster = True
        return stored, replace(info, has_poster=has_poster)

    def record(
        pending: PendingUpload,
        info: MediaInfo,
        title: str,
        description: str,
        tags: list[str],
        key: str | None,
    ) -> tuple[dict[str, Any], ConsistencyToken | None, bool]:
        """The write: publish the bytes and insert the row in one transaction.

        Returns (video, token, replayed): replayed when the key's video was stored before.
        """
        stored = pending.result
        assert stored is not None
        made: list[str] = []

        def insert(session: Session) -> dict[str, Any]:
            lock_digest(session, stored.sha256)
            pending.publish()
            video = Video(
                title=title,
                description=description,
                tags=tags,
                sha256=stored.sha256,
                size_bytes=stored.size_bytes,
                content_type=stored.content_type,
                duration_s=info.duration_s,
                width=info.width,
                height=info.height,
                video_codec=info.video_codec,
                audio_codec=info.audio_codec,
                has_poster=info.has_poster,
            )
            session.add(video)
            session.flush()
            session.refresh(video)
            made.append(str(video.id))
            return VideoOut.of(video).model_dump(mode="json")

        if key is not None:
            result, token = layer.write_idempotent(f"upload:{key}", insert)
            # A retry inside write_idempotent after an in-doubt commit finds its own row: that
            # is not a replay. Only a key whose video this request never made is.
            return result, token, not made or made[-1] != result["id"]
        with layer.writer() as unit:
            result = insert(unit.session)
            token = unit.commit()
        return result, token, False

    @app.post(
        "/api/videos",
        status_code=201,
        tags=["videos"],
        summary="Upload a video (multipart/form-data: file, title, description, tags)",
        responses={
            400: {"description": "malformed form, no file, bad Idempotency-Key"},
            413: {"description": "larger than the size limit"},
            415: {
                "description": "not a video (ffprobe cannot read it), or not multipart/form-data"
            },
            422: {"description": "empty file, SHA-256 mismatch, invalid fields, key reused"},
            503: {
                "description": "database or video store unavailable: retry with the same "
                "Idempotency-Key"
            },
        },
    )
    async def upload(
        request: Request,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
        x_content_sha256: Annotated[str | None, Header()] = None,
    ) -> JSONResponse:
        if idempotency_key is not None and not idempotency_key.strip():
            raise HTTPException(400, "Idempotency-Key is empty; send 1 to 200 characters")
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > store.max_bytes + FORM_OVERHEAD:
            refused.labels("413").inc()
            raise HTTPException(
                413,
                f"the request ({length} bytes) is larger than the limit of "
                f"{store.max_bytes} bytes per file",
            )
        form = FormStream(store, request.headers.get("content-type"))
        try:
            try:
                async for chunk in request.stream():
                    form.feed(chunk)
                    waiting = form.pending.backpressure() if form.pending else None
                    if waiting is not None:  # the store is behind: stop reading the request
                        await asyncio.wrap_future(waiting)
            except ClientDisconnect:
                raise HTTPException(400, "the client went away before the upload ended") from None
            pending = form.close()
            title, description, tags = _validated(form.fields)
            expected = x_content_sha256 or form.fields.get("sha256") or None
            stored, info = await run_in_threadpool(examine, pending, expected)
            result, token, replayed = await run_in_threadpool(
                record, pending, info, title, description, tags, idempotency_key
            )
        except Exception as exc:
            status = getattr(exc, "status", None) or getattr(exc, "status_code", None)
            if status:
                refused.labels(str(status)).inc()
            raise
        finally:
            await run_in_threadpool(form.discard)
        if replayed and result.get("sha256") != stored.sha256:
            return JSONResponse(
                error_body(
                    422,
                    f"Idempotency-Key {idempotency_key!r} was used for another file "
                    f"(sha256 {result.get('sha256')}); use a new key for a new upload",
                ),
                status_code=422,
            )
        if not replayed:
            uploaded_bytes.inc(stored.size_bytes)
        headers = {"Location": f"/api/videos/{result['id']}"}
        if replayed:
            headers["Idempotent-Replayed"] = "true"
        response = JSONResponse(result, status_code=201, headers=headers)
        if token is not None:
            publish_token(response, token)
        return response

    return app
