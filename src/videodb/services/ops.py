"""The operations page (`/ops`, served by the metadata application) and its data (`/api/ops`).

Everything comes from the platform's own servers, each part on its own (one that does not answer
is shown as unavailable, the rest still are):

- topology and failover history: Patroni's REST API (GET /cluster, /history; HTTPS verified
  with the cluster CA), the first node that answers;
- replication lag and commits per second over the last hour, the alerts, the backups with their
  age and verification: Prometheus's HTTP API (the backup scheduler exports the backups).
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

STATIC = Path(__file__).parent / "static"
PAGE = STATIC / "ops.html"
VENDOR = {
    "uPlot.iife.min.js": "application/javascript",
    "uPlot.min.css": "text/css",
}
WINDOW_S = 3600
TIMEOUT_S = 3.0


class OpsSettings(BaseModel):
    """Where the operations page reads from (conf/apps.json)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prometheus_url: str | None = None  # None: monitoring is off
    patroni_urls: list[str] = Field(default_factory=list)
    ca_file: str | None = None
    step_s: Annotated[int, Field(ge=1)] = 15


def _get(url: str, context: ssl.SSLContext | None = None) -> Any:
    with urllib.request.urlopen(url, timeout=TIMEOUT_S, context=context) as response:
        return json.loads(response.read())


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", None) or exc)


class OpsSource:
    def __init__(self, settings: OpsSettings) -> None:
        self.settings = settings
        self.context: ssl.SSLContext | None = None
        if settings.ca_file:
            self.context = ssl.create_default_context(cafile=settings.ca_file)

    def patroni(self, path: str) -> Any:
        """The first node's answer; every node's error if none answers."""
        errors = []
        for base in self.settings.patroni_urls:
            try:
                return _get(base + path, self.context)
            except (urllib.error.URLError, OSError, ValueError, ssl.SSLError) as exc:
                errors.append(f"{base}: {_reason(exc)}")
        raise LookupError("no Patroni answered: " + "; ".join(errors or ["none configured"]))

    def prometheus(self, path: str, **params: str) -> Any:
        if self.settings.prometheus_url is None:
            raise LookupError("monitoring is off (monitoring.enabled = false)")
        url = f"{self.settings.prometheus_url}{path}?{urllib.parse.urlencode(params)}"
        try:
            body = _get(url)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise LookupError(f"Prometheus does not answer: {_reason(exc)}") from exc
        if body.get("status") != "success":
            raise LookupError(f"Prometheus: {body.get('error', body)}")
        return body["data"]

    def series(self, query: str, label: str) -> list[dict[str, Any]]:
        now = time.time()
        data = self.prometheus(
            "/api/v1/query_range",
            query=query,
            start=f"{now - WINDOW_S:.0f}",
            end=f"{now:.0f}",
            step=str(self.settings.step_s),
        )
        return [
            {
                "name": r["metric"].get(label, "?"),
                "points": [[float(t), float(v)] for t, v in r["values"]],
            }
            for r in data["result"]
        ]

    def topology(self) -> list[dict[str, Any]]:
        doc = self.patroni("/cluster")
        return [
            {
                "name": m.get("name"),
                "host": m.get("host"),
                "role": m.get("role"),
                "state": m.get("state"),
                "timeline": m.get("timeline"),
                "lag": m.get("lag"),
            }
            for m in doc.get("members", [])
        ]

    def history(self) -> list[dict[str, Any]]:
        rows = self.patroni("/history") or []
        return [
            {
                "timeline": row[0],
                "lsn": row[1],
                "reason": row[2],
                "at": row[3] if len(row) > 3 else None,
                "new_leader": row[4] if len(row) > 4 else None,
            }
            for row in rows
        ]

    def alerts(self) -> list[dict[str, Any]]:
        found = self.prometheus("/api/v1/alerts")["alerts"]
        return [
            {
                "name": a["labels"].get("alertname"),
                "state": a.get("state"),
                "severity": a["labels"].get("severity"),
                "node": a["labels"].get("node") or a["labels"].get("host"),
                "summary": a.get("annotations", {}).get("summary", ""),
                "since": a.get("activeAt"),
            }
            for a in found
        ]

    def backups(self) -> list[dict[str, Any]]:
        data = self.prometheus("/api/v1/query", query="videodb_backup_info")
        now = time.time()
        found = [
            {
                "id": r["metric"].get("id"),
                "kind": r["metric"].get("kind"),
                "verified": r["metric"].get("verified"),
                "age_s": max(0.0, now - float(r["value"][1])),
            }
            for r in data["result"]
        ]
        return sorted(found, key=lambda b: b["age_s"])

    def everything(self) -> dict[str, Any]:
        parts = {
            "topology": self.topology,
            "history": self.history,
            "alerts": self.alerts,
            "backups": self.backups,
            "lag": lambda: self.series("max by (node) (videodb_replication_lag_seconds)", "node"),
            "tps": lambda: self.series(
                "sum by (node) (rate(videodb_transactions_commits[1m]))", "node"
            ),
        }
        result: dict[str, Any] = {"generated_at": time.time(), "errors": {}}
        with ThreadPoolExecutor(max_workers=len(parts)) as pool:
            futures = {name: pool.submit(fn) for name, fn in parts.items()}
            for name, future in futures.items():
                try:
                    result[name] = future.result()
                except (LookupError, KeyError, TypeError, ValueError) as exc:
                    result[name] = None
                    result["errors"][name] = str(exc)
        return result


def add_ops_routes(app: FastAPI, settings: OpsSettings) -> None:
    source = OpsSource(settings)

    @app.get("/ops", include_in_schema=False)
    def ops_page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @app.get("/ops/vendor/{name}", include_in_schema=False)
    def ops_vendor(name: str) -> FileResponse:
        if name not in VENDOR:
            raise HTTPException(404, f"no file {name!r}")
        return FileResponse(STATIC / "vendor" / "uplot" / name, media_type=VENDOR[name])

    @app.get("/api/ops", tags=["operations"], summary="What the operations page shows")
    def ops_data() -> dict[str, Any]:
        """Topology, failover history, alerts, backups, and the last hour's replication lag and
        commits per second; a part that cannot be read is null, with its reason in `errors`."""
        return source.everything()
