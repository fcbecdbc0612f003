"""The video resource as the APIs show it, and the queries the services share."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import HTTPException
from psycopg.rows import dict_row
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy import select
from sqlalchemy.orm import Session

from videodb.db import ConsistencyToken, DataLayer
from videodb.services.models import Video

Title = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Description = Annotated[str, StringConstraints(max_length=5000)]
Tag = Annotated[
    str, StringConstraints(strip_whitespace=True, to_lower=True, min_length=1, max_length=50)
]
Tags = Annotated[list[Tag], Field(max_length=20)]


class VideoOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    title: str
    description: str
    tags: list[str]
    sha256: str
    size_bytes: int
    content_type: str
    views: int
    duration_s: float | None = None
    width: int | None = None
    height: int | None = None
    video_codec: str | None = None
    audio_codec: str | None = None
    has_poster: bool = False
    created_at: datetime
    updated_at: datetime
    stream_url: str = ""
    poster_url: str | None = None

    @classmethod
    def of(cls, video: Video) -> VideoOut:
        return cls.model_validate(video).with_urls()

    def with_urls(self) -> VideoOut:
        self.stream_url = f"/api/videos/{self.id}/stream"
        self.poster_url = f"/api/videos/{self.id}/poster" if self.has_poster else None
        return self


def parse_tags(raw: str) -> list[str]:
    """Tags from a form field: comma-separated, trimmed, lower-cased, without repeats."""
    seen: list[str] = []
    for tag in raw.split(","):
        tag = tag.strip().lower()
        if tag and tag not in seen:
            seen.append(tag)
    return seen


def parse_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError as exc:
        raise HTTPException(
            404, f"no video {raw!r}: ids are UUIDs like 3f2b8c1e-...; list them at /api/videos"
        ) from exc


# The columns VideoOut shows, for reads through DataLayer.fetch (no ORM on the hot path).
VIDEO_COLUMNS = tuple(
    name for name in VideoOut.model_fields if name not in ("stream_url", "poster_url")
)
VIDEO_BY_ID = f"SELECT {', '.join(VIDEO_COLUMNS)} FROM {Video.__tablename__} WHERE id = %s"


def fetch_video(
    layer: DataLayer, video_id: uuid.UUID, token: ConsistencyToken | None = None
) -> VideoOut:
    """One video by id in one statement on the pooled driver connection (the streaming
    service's lookup), with the token's read-your-writes like get_video through read()."""
    rows = layer.fetch(VIDEO_BY_ID, (video_id,), token, row_factory=dict_row)
    if not rows:
        raise HTTPException(404, f"no video {video_id}; it was never uploaded or was deleted")
    return VideoOut.model_validate(rows[0]).with_urls()


def get_video(session: Session, video_id: uuid.UUID) -> Video:
    video = session.execute(select(Video).where(Video.id == video_id)).scalar_one_or_none()
    if video is None:
        raise HTTPException(404, f"no video {video_id}; it was never uploaded or was deleted")
    return video
