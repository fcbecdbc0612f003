"""What every application shares: JSON errors, /healthz, /readyz, /metrics, request metrics,
and a data layer opened at startup and closed at shutdown."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from sqlalchemy import text
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from videodb.db import DataLayer, WriteInDoubtError
from videodb.db.errors import classify
from videodb.db.layer import DB_ERRORS
from videodb.services.storage import StorageError

log = logging.getLogger("videodb.services")

Hook = Callable[[], Awaitable[None]]


def error_body(status: int, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"status": status, "message": message, **extra}}


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message), status_code=status, headers=headers)


def first_line(exc: BaseException) -> str:
    message = str(exc).strip()
    return message.splitlines()[0] if message else type(exc).__name__


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        loc = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query"))
        parts.append(f"{loc or 'request'}: {error.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def _route_template(scope: Scope) -> str:
    for route in scope["app"].router.routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return str(getattr(route, "path", "?"))
    return "unmatched"


class _Measure:
    """Requests and time to the response's headers, by route and status. Plain ASGI: Starlette's
    BaseHTTPMiddleware would pass every streamed body through an extra memory stream."""

    def __init__(
        self, app: ASGIApp, *, service: str, requests: Counter, latency: Histogram
    ) -> None:
        self.app = app
        self.service = service
        self.requests = requests
        self.latency = latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = [500]

        async def measured_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                route = _route_template(scope)
                self.latency.labels(self.service, route).observe(time.perf_counter() - began)
                self.requests.labels(self.service, scope["method"], route, str(status[0])).inc()
            await send(message)

        await self.app(scope, receive, measured_send)


def create_app(
    service: str,
    layer: DataLayer,
    *,
    description: str,
    ready_on: str,
    on_startup: list[Hook] | None = None,
    on_shutdown: list[Hook] | None = None,
) -> FastAPI:
    """A FastAPI app for `service`; `ready_on` is "writer" or "reader": what /readyz queries."""
    startup = on_startup or []
    shutdown = on_shutdown or []

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            await run_in_threadpool(layer.warm)
        except DB_ERRORS as exc:  # /readyz reports it; the pools open on first use
            log.warning("%s: could not open the database pools at startup: %s", service, exc)
        for hook in startup:
            await hook()
        try:
            yield
        finally:
            for hook in shutdown:
                await hook()
            layer.dispose()

    # /docs with Swagger UI's assets served by the app itself (no CDN: works offline).
    app = FastAPIOffline(
        title=f"video platform: {service}",
        description=description,
        version="1",
        lifespan=lifespan,
    )
    app.state.layer = layer
    requests = Counter(
        "videodb_http_requests_total",
        "HTTP requests by route and status",
        ["service", "method", "route", "status"],
        registry=layer.registry,
    )
    latency = Histogram(
        "videodb_http_request_seconds",
        "Time to the response's headers, by route",
        ["service", "route"],
        registry=layer.registry,
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    )

    app.add_middleware(_Measure, service=service, requests=requests, latency=latency)

    @app.exception_handler(StarletteHTTPException)  # FastAPI's, and Starlette's 404 and 405
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return json_error(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return json_error(422, _validation_message(exc))

    @app.exception_handler(StorageError)
    async def storage_error(_: Request, exc: StorageError) -> JSONResponse:
        return json_error(exc.status, str(exc))

    @app.exception_handler(WriteInDoubtError)
    async def in_doubt(_: Request, exc: WriteInDoubtError) -> JSONResponse:
        return json_error(
            503,
            f"the database connection failed during the write, which may or may not have "
            f"committed; retry with the same Idempotency-Key ({exc})",
            {"Retry-After": "1"},
        )

    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("%s: unexpected error", service, exc_info=exc)
        return json_error(
            500,
            f"internal error ({type(exc).__name__}); the details are in "
            f"'platform.sh logs {service}'",
        )

    app.add_exception_handler(Exception, unexpected)

    async def database_error(request: Request, exc: Exception) -> JSONResponse:
        failure = classify(exc)
        if not failure.retryable:
            # A constraint, a bug, bad data: retrying would fail the same way. Not a 503.
            log.error(
                "%s: database error on %s %s",
                service,
                request.method,
                request.url.path,
                exc_info=exc,
            )
            return json_error(
                500,
                f"the database refused the request ({first_line(exc)}); the details are in "
                f"'platform.sh logs {service}'",
            )
        log.warning("%s: database unavailable (%s): %s", service, failure.value, first_line(exc))
        return json_error(
            503,
            f"the database is not available ({first_line(exc)}); retry in a moment",
            {"Retry-After": "1"},
        )

    for db_error in DB_ERRORS:
        app.add_exception_handler(db_error, database_error)

    @app.get("/healthz", tags=["operations"], summary="The process answers")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "service": service}

    @app.get("/readyz", tags=["operations"], summary="The database answers through its port")
    def readyz() -> JSONResponse:
        engine = layer.writer_engine if ready_on == "writer" else layer.reader_engine
        for attempt in (1, 2):
            try:
                with engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
                break
            except DB_ERRORS as exc:
                if attempt == 2 or not classify(exc).role_may_have_changed:
                    return json_error(503, f"{ready_on} port not reachable: {first_line(exc)}")
                # The pool held connections a failover cut; the data layer retired them when
                # this error went through the pool: ask once more, on a new connection.
        return JSONResponse({"status": "ready", "service": service, "database": ready_on})

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics")
    def metrics() -> Response:
        return Response(generate_latest(layer.registry), media_type=CONTENT_TYPE_LATEST)

    return app
