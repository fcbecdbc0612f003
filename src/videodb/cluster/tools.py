"""Commands the CLI hands over to: psql on the primary, tail on a service's logs."""

from __future__ import annotations

from pathlib import Path

from videodb.cluster import monitoring, seaweedfs
from videodb.cluster.patroni_api import PatroniAPI
from videodb.cluster.render import APP_PROGRAMS, ETCD_PROGRAM, HAPROXY_PROGRAM
from videodb.config import Settings
from videodb.errors import ClusterError, ConfigError
from videodb.layout import StateLayout
from videodb.runner import tool_env


def psql_command(
    settings: Settings, layout: StateLayout, sql: str | None = None
) -> tuple[list[str], dict[str, str]]:
    """psql as the superuser on the current primary; the password comes from a 0600 pgpass file."""
    primary = PatroniAPI(settings).require_leader("to connect to")
    argv = [
        str(settings.postgresql.bin_dir / "psql"),
        f"--host={settings.node_address(primary)}",
        f"--port={primary.port}",
        f"--username={settings.database.superuser}",
        f"--dbname={settings.database.name}",
        "--no-password",
    ]
    if sql is not None:
        # No ~/.psqlrc for a scripted command: its output must not depend on the operator's.
        argv += ["--no-psqlrc", "-v", "ON_ERROR_STOP=1", f"--command={sql}"]
    env = tool_env(PGPASSFILE=str(layout.pgpass()))
    return argv, env


def services(settings: Settings, layout: StateLayout) -> list[str]:
    this = settings.this_host()
    return [
        *(n.name for n in settings.nodes),
        HAPROXY_PROGRAM,
        ETCD_PROGRAM,
        *APP_PROGRAMS,
        *(p.name for p in seaweedfs.programs(settings, layout, this)),
        *(p.name for p in monitoring.programs(settings, layout, this)),
        "supervisord",
        "cli",  # what the CLI's state-changing commands did
    ]


def log_files(settings: Settings, layout: StateLayout, service: str) -> list[Path]:
    known = services(settings, layout)
    if service not in known:
        raise ConfigError(f"no service {service!r}; the services are: {', '.join(known)}")
    files = [layout.program_log(service)]
    if service in {n.name for n in settings.nodes}:
        current = layout.postgres_log(service)
        if current is not None:
            files.append(current)
    existing = [f for f in files if f.exists()]
    if not existing:
        raise ClusterError(
            f"no log for {service} yet under {layout.logs}; has the platform been started?"
        )
    return existing


def tail_command(files: list[Path], lines: int, follow: bool) -> list[str]:
    argv = ["tail", "-n", str(lines)]
    if follow:
        argv.append("-F")
    return [*argv, *(str(f) for f in files)]
