"""FastAPI dependencies: a writer unit and a reader session per request, tokens in and out."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from fastapi import HTTPException, Request, Response
from sqlalchemy.orm import Session

from videodb.db.layer import DataLayer, WriteUnit
from videodb.db.token import COOKIE, HEADER, ConsistencyToken, TokenError


def publish_token(response: Response, token: ConsistencyToken) -> None:
    """Give the client its read-your-writes token: the header (for APIs) and a cookie (for
    browsers and `curl -c`), which the metadata and streaming services both honour."""
    response.headers[HEADER] = str(token)
    response.set_cookie(COOKIE, str(token), httponly=True, samesite="lax")


def request_token(request: Request) -> ConsistencyToken | None:
    """The consistency token of a request: the X-Consistency-Token header, else the cookie."""
    raw = request.headers.get(HEADER) or request.cookies.get(COOKIE)
    if not raw:
        return None
    try:
        return ConsistencyToken.parse(raw)
    except TokenError as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from exc


def writer_dependency(layer: DataLayer) -> Callable[[Response], Iterator[WriteUnit]]:
    """Yields a WriteUnit; call `unit.commit()` in the endpoint: the response then carries the
    token in the X-Consistency-Token header and the consistency_token cookie."""

    def dependency(response: Response) -> Iterator[WriteUnit]:
        with layer.writer() as unit:
            unit.on_commit(lambda token: publish_token(response, token))
            yield unit

    return dependency


def reader_dependency(layer: DataLayer) -> Callable[[Request], Iterator[Session]]:
    """Yields a read-only Session that honours the request's consistency token."""

    def dependency(request: Request) -> Iterator[Session]:
        token = request_token(request)
        with layer.reader(token) as unit:
            yield unit.session

    return dependency
