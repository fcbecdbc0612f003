"""Is WAL archiving working? pg_stat_archiver on every running node (archive_mode = always: the
replicas archive too)."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from videodb.cluster.pg import connect_superuser
from videodb.config import Settings
from videodb.secrets import ClusterSecrets

QUERY = """
SELECT archived_count, last_archived_wal, last_archived_time::text,
       failed_count, last_failed_wal, last_failed_time::text,
       coalesce(last_failed_time > last_archived_time, last_failed_time IS NOT NULL)
FROM pg_stat_archiver
"""


@dataclass
class ArchiverStatus:
    node: str
    reachable: bool
    archived_count: int = 0
    last_archived_wal: str | None = None
    last_archived_time: str | None = None
    failed_count: int = 0
    last_failed_wal: str | None = None
    last_failed_time: str | None = None
    failing: bool = False  # the last attempt failed: the archiver is stuck on a file

    @property
    def detail(self) -> str:
        if not self.reachable:
            return "not reachable"
        if self.failing:
            return f"FAILING on {self.last_failed_wal} since {self.last_failed_time}; see its log"
        if self.last_archived_wal is None:
            return "nothing archived yet"
        return f"last {self.last_archived_wal} at {self.last_archived_time}"


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def archiver_status(settings: Settings, secrets: ClusterSecrets) -> list[ArchiverStatus]:
    found = []
    for node in settings.nodes:
        try:
            with connect_superuser(settings, secrets, node, timeout=2) as conn:
                row = conn.execute(QUERY).fetchone()
        except psycopg.Error:
            found.append(ArchiverStatus(node.name, reachable=False))
            continue
        assert row is not None
        found.append(
            ArchiverStatus(
                node.name,
                True,
                int(str(row[0])),
                _text(row[1]),
                _text(row[2]),
                int(str(row[3])),
                _text(row[4]),
                _text(row[5]),
                bool(row[6]),
            )
        )
    return found
