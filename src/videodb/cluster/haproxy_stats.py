"""HAProxy's view of the backends, read from its stats page in CSV form."""

from __future__ import annotations

import csv
import io
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any

from videodb.cluster.render import READ_BACKEND, WRITE_BACKEND
from videodb.config import Settings
from videodb.errors import NotRunningError


@dataclass(frozen=True)
class ServerStatus:
    """One server line of one HAProxy backend."""

    backend: str
    server: str
    status: str  # UP, DOWN, MAINT, no check...
    current_sessions: int
    total_sessions: int
    avg_connect_ms: int | None
    avg_response_ms: int | None
    check_status: str
    last_change_s: int | None
    down_transitions: int = 0  # UP -> DOWN transitions since HAProxy started (chkdown)

    @property
    def up(self) -> bool:
        return self.status.startswith("UP")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "up": self.up}


def stats_url(settings: Settings, address: str | None = None) -> str:
    """This host's HAProxy stats page (or the one on `address`)."""
    return f"http://{address or settings.address}:{settings.haproxy.stats_port}/stats"


def _int(value: str) -> int | None:
    return int(value) if value.strip().lstrip("-").isdigit() else None


def parse_stats_csv(text: str) -> list[ServerStatus]:
    reader = csv.DictReader(io.StringIO(text.lstrip("# ")))
    servers = []
    for row in reader:
        backend, server = row.get("pxname", ""), row.get("svname", "")
        if backend not in (WRITE_BACKEND, READ_BACKEND) or server in ("FRONTEND", "BACKEND"):
            continue
        servers.append(
            ServerStatus(
                backend=backend,
                server=server,
                status=row.get("status", ""),
                current_sessions=_int(row.get("scur", "")) or 0,
                total_sessions=_int(row.get("stot", "")) or 0,
                avg_connect_ms=_int(row.get("ctime", "")),
                avg_response_ms=_int(row.get("rtime", "")),
                check_status=row.get("check_status", ""),
                last_change_s=_int(row.get("lastchg", "")),
                down_transitions=_int(row.get("chkdown", "")) or 0,
            )
        )
    return servers


def fetch_server_status(
    settings: Settings, timeout: float = 2.0, address: str | None = None
) -> list[ServerStatus]:
    url = stats_url(settings, address) + ";csv"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            text = resp.read().decode()
    except OSError as exc:
        raise NotRunningError(
            f"HAProxy stats at {url} not reachable ({exc}); see 'platform.sh logs haproxy-postgres'"
        ) from exc
    return parse_stats_csv(text)
