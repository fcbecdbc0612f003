"""A node's postmaster, found and stopped through its data directory (not through Patroni:
PostgreSQL survives a kill -9 of its Patroni, which starts it detached)."""

from __future__ import annotations

from pathlib import Path

from videodb.config import Settings
from videodb.errors import ClusterError
from videodb.layout import service_user
from videodb.runner import run_tool


def postmaster_pid(data_dir: Path) -> int | None:
    """The pid in postmaster.pid, if that process is alive and is a postgres."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None
    return pid if comm.startswith("postgres") else None


def pg_ctl_stop(settings: Settings, data_dir: Path) -> None:
    argv = [str(settings.postgresql.bin_dir / "pg_ctl"), "stop", "-m", "fast", "-w", "-D"]
    argv.append(str(data_dir))
    run_tool(argv, what=f"pg_ctl stop of {data_dir}", timeout=120, user=service_user(), check=False)
    if postmaster_pid(data_dir) is not None:
        raise ClusterError(
            f"postgres in {data_dir} did not stop; see its log under the state directory's logs/"
        )
