"""A load like the applications' while credentials rotate: the services' own data layer (password
file, verify-full through HAProxy) opening new connections for every write and read, and HTTP
reads through the running applications. Any failure is recorded."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import text

from videodb.db import DataLayer
from videodb.services.runtime import AppConfig
from videodb.waiting import wait_for


@dataclass
class Load:
    """What the applications do, worst case: the data layer the services use (password file,
    verify-full through HAProxy) opening new connections for every write and read, and HTTP
    requests to the running applications (their pooled connections)."""

    apps_config: Path  # the applications' conf/apps.json: their datasource
    url: str  # a read through the running applications
    table: str  # the writes go there (it exists)
    inside: Callable[[], AbstractContextManager[object]] = nullcontext
    failures: list[str] = field(default_factory=list)
    writes: int = 0
    reads: int = 0
    http_ok: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        for target in (self._data_layer, self._http):
            thread = threading.Thread(target=self._run, args=(target,), daemon=True)
            thread.start()
            self._threads.append(thread)
        wait_for(lambda: self.writes >= 5 and self.http_ok >= 5, timeout=30, what="the load")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _run(self, target: Callable[[], None]) -> None:
        with self.inside():
            target()

    def _data_layer(self) -> None:
        layer = DataLayer(AppConfig.load(self.apps_config).datasource)
        try:
            while not self._stop.is_set():
                try:
                    with layer.writer() as unit:
                        unit.session.execute(text(f"INSERT INTO {self.table} DEFAULT VALUES"))
                    self.writes += 1
                    with layer.reader() as read:
                        read.session.execute(text(f"SELECT count(*) FROM {self.table}")).scalar()
                    self.reads += 1
                except Exception as exc:
                    self.failures.append(f"data layer: {exc!r}")
                layer.dispose()  # the next write and read open new connections
                self._stop.wait(0.02)
        finally:
            layer.dispose()

    def _http(self) -> None:
        with httpx.Client(timeout=10) as http:
            while not self._stop.is_set():
                try:
                    response = http.get(self.url)
                    if response.status_code == 200:
                        self.http_ok += 1
                    else:
                        self.failures.append(f"http {response.status_code}: {response.text}")
                except httpx.HTTPError as exc:
                    self.failures.append(f"http: {exc!r}")
                self._stop.wait(0.02)
