"""Generated passwords, kept in 0600 files under the state directory and never printed."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from videodb.errors import NotRunningError
from videodb.layout import StateLayout

SUPERUSER_FILE = "superuser.password"
REPLICATION_FILE = "replication.password"
API_FILE = "patroni-api.password"


@dataclass(frozen=True)
class ClusterSecrets:
    superuser_password: str
    replication_password: str
    api_password: str

    def __repr__(self) -> str:  # never leak a password through a log or a traceback
        return "ClusterSecrets(********)"


def write_private(path: Path, text: str) -> None:
    """Create or replace `path` with mode 0600 from the start (no window where others can read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _load_or_create(path: Path) -> str:
    if path.exists():
        value = path.read_text(encoding="utf-8").strip()
        if value:
            return value
    value = secrets.token_urlsafe(32)
    write_private(path, value + "\n")
    return value


def ensure_secrets(layout: StateLayout) -> ClusterSecrets:
    layout.secrets.mkdir(parents=True, exist_ok=True)
    os.chmod(layout.secrets, 0o700)
    return ClusterSecrets(
        superuser_password=_load_or_create(layout.secret(SUPERUSER_FILE)),
        replication_password=_load_or_create(layout.secret(REPLICATION_FILE)),
        api_password=_load_or_create(layout.secret(API_FILE)),
    )


def load_secrets(layout: StateLayout) -> ClusterSecrets:
    files = [layout.secret(n) for n in (SUPERUSER_FILE, REPLICATION_FILE, API_FILE)]
    if not all(f.exists() for f in files):
        raise NotRunningError(
            f"no cluster secrets under {layout.secrets}; start the platform first "
            "('platform.sh start video')"
        )
    su, rep, api = (f.read_text(encoding="utf-8").strip() for f in files)
    return ClusterSecrets(superuser_password=su, replication_password=rep, api_password=api)


def write_pgpass(layout: StateLayout, host: str, superuser: str, password: str) -> Path:
    """A libpq password file for the CLI's own psql / pg_dump runs (PGPASSFILE)."""
    path = layout.pgpass()
    write_private(path, f"{host}:*:*:{superuser}:{password}\n")
    return path
