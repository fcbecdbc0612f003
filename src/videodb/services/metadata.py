"""Metadata service: list (pagination, filters), full-text search, get, update, delete.

Reads go through the reader (the read port, a replica when it has the caller's writes); the
caller's consistency token (header or cookie) makes its own writes visible at once. Updates and
deletes go through the writer and return a new token. The platform's web page is served here.
"""

# No `from __future__ import annotations` here: FastAPI must evaluate the endpoints' annotations
# where they are defined, since `Depends(writer)` names a local of build_app.
import logging
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy import ColumnElement, Select, delete, desc, func, select
from sqlalchemy.orm import Session

from videodb.db import DataLayer, WriteUnit
from videodb.db.layer import DB_ERRORS
from videodb.db.web import publish_token, request_token, writer_dependency
from videodb.services.base import create_app
from videodb.services.models import Video
from videodb.services.ops import add_ops_routes
from videodb.services.runtime import AppConfig
from videodb.services.storage import StoreUnavailableError
from videodb.services.stores import open_store
from videodb.services.sweeper import drop_if_unreferenced
from videodb.services.videos import Description, Tags, Title, VideoOut, get_video, parse_id

DESCRIPTION = """Lists, searches, reads, updates and deletes videos. Reads use the read port and
honour the read-your-writes token (`X-Consistency-Token` header or `consistency_token` cookie)
that the upload service and this service's writes return."""

log = logging.getLogger(__name__)
PAGE = Path(__file__).parent / "static" / "index.html"
Sort = Literal["newest", "oldest", "views", "title", "relevance"]


class VideoPage(BaseModel):
    items: list[VideoOut]
    total: int
    limit: int
    offset: int
    query: str | None = None


class VideoUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: Title | None = None
    description: Description | None = None
    tags: Tags | None = None


def _filtered(
    q: str | None, tags: list[str], content_type: str | None
) -> tuple[list[ColumnElement[bool]], Any]:
    conditions: list[ColumnElement[bool]] = []
    query = None
    if q:
        query = func.websearch_to_tsquery("english", q)
        conditions.append(Video.search.bool_op("@@")(query))
    if tags:
        conditions.append(Video.tags.contains([t.strip().lower() for t in tags]))
    if content_type:
        conditions.append(Video.content_type == content_type)
    return conditions, query


def _ordered(statement: Select[Video], sort: Sort, query: Any) -> Select[Video]:
    if sort == "relevance" and query is not None:
        return statement.order_by(desc(func.ts_rank(Video.search, query)), desc(Video.created_at))
    if sort == "oldest":
        return statement.order_by(Video.created_at, Video.id)
    if sort == "views":
        return statement.order_by(desc(Video.views), desc(Video.created_at))
    if sort == "title":
        return statement.order_by(Video.title, Video.id)
    return statement.order_by(desc(Video.created_at), Video.id)


def build_app(config: AppConfig, layer: DataLayer | None = None) -> FastAPI:
    layer = layer or DataLayer(config.datasource)
    store = open_store(config.storage, config.max_upload_bytes)

    async def close_store() -> None:
        store.close()

    app = create_app(
        "metadata", layer, description=DESCRIPTION, ready_on="reader", on_shutdown=[close_store]
    )
    writer = writer_dependency(layer)

    add_ops_routes(app, config.ops)

    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.get("/api/videos", tags=["videos"], summary="List or search videos")
    def list_videos(
        request: Request,
        q: Annotated[
            str | None,
            Query(max_length=200, description="Full-text search over title, tags, description"),
        ] = None,
        tag: Annotated[list[str] | None, Query(description="Only videos with every tag")] = None,
        content_type: Annotated[str | None, Query(max_length=100)] = None,
        sort: Annotated[Sort | None, Query(description="Default: relevance with q, newest")] = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    ) -> VideoPage:
        q = (q or "").strip() or None
        conditions, query = _filtered(q, tag or [], content_type)
        statement = _ordered(
            select(Video).where(*conditions), sort or ("relevance" if q else "newest"), query
        )

        def run(session: Session) -> VideoPage:
            total = session.execute(
                select(func.count()).select_from(Video).where(*conditions)
            ).scalar_one()
            rows = session.execute(statement.limit(limit).offset(offset)).scalars().all()
            items = [VideoOut.of(v) for v in rows]
            return VideoPage(items=items, total=total, limit=limit, offset=offset, query=q)

        return layer.read(run, request_token(request))

    @app.get(
        "/api/videos/{video_id}",
        tags=["videos"],
        summary="One video",
        responses={404: {"description": "no such video"}},
    )
    def get_one(video_id: str, request: Request) -> VideoOut:
        vid = parse_id(video_id)
        return layer.read(lambda s: VideoOut.of(get_video(s, vid)), request_token(request))

    @app.patch(
        "/api/videos/{video_id}",
        tags=["videos"],
        summary="Change title, description or tags",
        responses={404: {"description": "no such video"}},
    )
    def update(
        video_id: str, change: VideoUpdate, unit: Annotated[WriteUnit, Depends(writer)]
    ) -> VideoOut:
        video = get_video(unit.session, parse_id(video_id))
        values = change.model_dump(exclude_unset=True, exclude_none=True)
        if not values:
            raise HTTPException(422, "nothing to change: send title, description or tags")
        for name, value in values.items():
            setattr(video, name, value)
        unit.session.flush()
        unit.session.refresh(video)
        out = VideoOut.of(video)
        unit.commit()
        return out

    @app.delete(
        "/api/videos/{video_id}",
        status_code=204,
        tags=["videos"],
        summary="Delete a video (its bytes too, unless another video has the same bytes)",
        responses={404: {"description": "no such video"}},
    )
    def remove(video_id: str, unit: Annotated[WriteUnit, Depends(writer)]) -> Response:
        video = get_video(unit.session, parse_id(video_id))
        sha = video.sha256
        unit.session.execute(delete(Video).where(Video.id == video.id))
        token = unit.commit()
        # The row is gone; the bytes go too unless another video has them. Checked again under
        # the digest's lock in a transaction of its own, so that an upload of the same bytes in
        # between keeps them; a failure here leaves them to the sweeper, never loses a video.
        try:
            drop_if_unreferenced(layer, store, sha)
        except (StoreUnavailableError, *DB_ERRORS) as exc:
            log.warning("video %s deleted; its bytes are left to the sweeper: %s", video_id, exc)
        # A Response returned as is does not carry the dependency's headers: set the token here.
        done = Response(status_code=204)
        publish_token(done, token)
        return done

    return app
