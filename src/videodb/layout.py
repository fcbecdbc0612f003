"""Where everything lives under the state directory, and which OS user runs the servers."""

from __future__ import annotations

import hashlib
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from videodb.config import Settings
from videodb.errors import ConfigError

STATE_DIR_NAME = ".state"


@dataclass(frozen=True)
class ServiceUser:
    """The OS user PostgreSQL, Patroni and etcd run as (initdb refuses to run as root)."""

    name: str
    uid: int
    gid: int

    @property
    def is_current(self) -> bool:
        return self.uid == os.geteuid()


def service_user() -> ServiceUser:
    if os.geteuid() != 0:
        entry = pwd.getpwuid(os.geteuid())
        return ServiceUser(entry.pw_name, entry.pw_uid, entry.pw_gid)
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError as exc:
        raise ConfigError(
            "running as root but there is no 'postgres' OS user to run PostgreSQL as; "
            "install the postgresql-15 package (it creates the user)"
        ) from exc
    return ServiceUser(entry.pw_name, entry.pw_uid, entry.pw_gid)


def as_user(user: ServiceUser, argv: list[str]) -> list[str]:
    """`argv` run as `user` (through runuser when that is not who we are)."""
    return argv if user.is_current else ["runuser", "-u", user.name, "--", *argv]


def chown_tree(path: Path, user: ServiceUser) -> None:
    if user.is_current:
        return
    os.chown(path, user.uid, user.gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), user.uid, user.gid, follow_symlinks=False)


def traversable_by(user: ServiceUser, path: Path) -> bool:
    """True when `user` can reach `path` through every directory above it (mode bits only)."""
    if user.uid == 0 or user.is_current:
        return True
    current = path.resolve()
    for directory in [current, *current.parents]:
        if not directory.exists():
            continue
        st = directory.stat()
        if st.st_uid == user.uid:
            allowed = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid == user.gid:
            allowed = bool(st.st_mode & stat.S_IXGRP)
        else:
            allowed = bool(st.st_mode & stat.S_IXOTH)
        if not allowed:
            return False
    return True


def project_home() -> Path:
    """The checkout: VIDEODB_HOME (set by platform.sh), else the current directory."""
    return Path(os.environ.get("VIDEODB_HOME", os.getcwd())).resolve()


def default_state_dir(home: Path, user: ServiceUser, port_offset: int = 0) -> Path:
    """Inside the checkout, unless PostgreSQL's OS user cannot reach it there.

    A platform moved by --port-offset N gets its own: .state-N.
    """
    suffix = f"-{port_offset}" if port_offset else ""
    inside = home / f"{STATE_DIR_NAME}{suffix}"
    if traversable_by(user, home):
        return inside
    digest = hashlib.sha256(str(home).encode()).hexdigest()[:12]
    return Path("/var/lib/videodb") / f"state-{digest}{suffix}"


@dataclass(frozen=True)
class StateLayout:
    """Paths under one state directory: data, logs, generated configs, secrets, backups."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def conf(self) -> Path:
        return self.root / "conf"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def service_run(self) -> Path:
        """Sockets and files written by the servers themselves (owned by their OS user)."""
        return self.run / "svc"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def backups(self) -> Path:
        return self.root / "backups"

    def node_data(self, node: str) -> Path:
        return self.data / node

    def etcd_data(self) -> Path:
        return self.data / "etcd"

    def patroni_config(self, node: str) -> Path:
        return self.conf / f"{node}.yml"

    def haproxy_config(self) -> Path:
        return self.conf / "haproxy.cfg"

    def archive_script(self) -> Path:
        """PostgreSQL's archive_command (0755)."""
        return self.conf / "archive-wal.sh"

    def apps_config(self) -> Path:
        """What the applications run with (database password included): 0600."""
        return self.conf / "apps.json"

    def app_password_file(self) -> Path:
        """The application role's password(s), read at each new connection (0600)."""
        return self.conf / "app-password"

    def supervisor_config(self) -> Path:
        return self.conf / "supervisord.conf"

    def supervisor_socket(self) -> Path:
        return self.run / "supervisor.sock"

    def supervisor_pidfile(self) -> Path:
        return self.run / "supervisord.pid"

    def program_log(self, program: str) -> Path:
        return self.logs / f"{program}.log"

    def postgres_log_dir(self, node: str) -> Path:
        return self.logs / f"{node}-postgresql"

    def postgres_log(self, node: str) -> Path | None:
        """The PostgreSQL log file written to last (one per weekday, reused a week later)."""
        files = list(self.postgres_log_dir(node).glob("postgresql-*.log"))
        return max(files, key=lambda f: f.stat().st_mtime) if files else None

    def secret(self, name: str) -> Path:
        return self.secrets / name

    def pgpass(self) -> Path:
        return self.secrets / "pgpass"


@dataclass(frozen=True)
class TLSFiles:
    root: Path

    @property
    def ca(self) -> Path:
        return self.root / "ca.crt"

    @property
    def cert(self) -> Path:
        return self.root / "host.crt"

    @property
    def key(self) -> Path:
        return self.root / "host.key"

    @property
    def replicator_cert(self) -> Path:
        return self.root / "replicator.crt"

    @property
    def replicator_key(self) -> Path:
        return self.root / "replicator.key"

    @property
    def monitor_cert(self) -> Path:
        return self.root / "monitor.crt"

    @property
    def monitor_key(self) -> Path:
        return self.root / "monitor.key"

    def leaves(self) -> list[tuple[Path, Path]]:
        return [
            (self.cert, self.key),
            (self.replicator_cert, self.replicator_key),
            (self.monitor_cert, self.monitor_key),
        ]


def tls_files(layout: StateLayout) -> TLSFiles:
    """This host's certificates (cluster/tls.py): conf/tls, 0700, the service user's."""
    return TLSFiles(layout.conf / "tls")


def resolve_layout(settings: Settings, home: Path | None = None) -> StateLayout:
    user = service_user()
    root = settings.state_dir or default_state_dir(
        home or project_home(), user, settings.port_offset
    )
    root = root.expanduser().resolve()
    return StateLayout(root)
