"""The applications (upload, metadata, streaming) under the platform's supervisord: their config
file, the schema they need, starting them once the cluster is healthy, and their readiness."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from videodb.cluster import monitoring, render, seaweedfs
from videodb.cluster.preflight import find_toolchain
from videodb.cluster.supervisor import Supervisor, supervisord_pid
from videodb.config import Settings
from videodb.errors import NotRunningError, PrerequisiteError, TimeoutExpired
from videodb.layout import ServiceUser, StateLayout, service_user, traversable_by
from videodb.ports import port_holder, port_is_free
from videodb.secrets import write_private
from videodb.services.runtime import AppConfig, storage_dir
from videodb.services.storage import StoreUnavailableError
from videodb.services.stores import open_store
from videodb.waiting import wait_for

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


@dataclass
class AppState:
    name: str
    port: int
    state: str  # supervisord's
    pid: int | None
    ready: bool
    detail: str


def app_ports(settings: Settings) -> dict[str, int]:
    return {str(name): port for name, port in settings.apps.service_ports().items()}


def write_app_files(settings: Settings, layout: StateLayout, user: ServiceUser) -> AppConfig:
    """conf/apps.json (0600, the service user's) and the local storage directory."""
    local_dir = storage_dir(settings, layout)
    config = AppConfig.for_platform(
        settings,
        layout,
        seaweedfs.store_settings(settings, layout, local_dir),
        monitoring.ops_settings(settings, layout),
    )
    if config.storage.backend == "local":
        _prepare_local_storage(local_dir, user)
    for path, text in (
        (layout.apps_config(), config.to_json()),
        (layout.app_password_file(), config.datasource.password.get_secret_value() + "\n"),
    ):
        write_private(path, text)
        if not user.is_current:
            os.chown(path, user.uid, user.gid)
    return config


def _prepare_local_storage(root: Path, user: ServiceUser) -> None:
    if not traversable_by(user, root):
        raise PrerequisiteError(
            f"video storage {root} cannot be reached by the '{user.name}' OS user "
            "that runs the applications (a directory above it is closed to it); choose another "
            "with --set apps.storage_dir=PATH"
        )
    for directory in (root, root / "tmp", root / "posters"):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            if not user.is_current:
                os.chown(directory, user.uid, user.gid)
            os.chmod(directory, 0o750)
        except OSError as exc:
            raise PrerequisiteError(
                f"video storage {directory} cannot be prepared for the '{user.name}' user "
                f"({exc.strerror}); choose another with --set apps.storage_dir=PATH"
            ) from exc


def wait_store_ready(config: AppConfig, timeout: float, progress: Progress) -> None:
    """The videos' store takes a write (its bucket made if missing), or a clear error."""
    store = open_store(config.storage, config.max_upload_bytes)
    progress(f"waiting for the video store ({store.describe()}) to take a write")
    last: list[str] = []

    def ready() -> bool:
        try:
            store.ensure_ready()
        except StoreUnavailableError as exc:
            last[:] = [str(exc)]
            return False
        return True

    try:
        wait_for(ready, timeout=timeout, what="the video store ready", interval=0.3)
    except TimeoutExpired as exc:
        hint = (
            "; see 'platform.sh logs seaweedfs-s3' and 'logs seaweedfs-filer'"
            if config.storage.backend == "seaweedfs"
            else ""
        )
        raise TimeoutExpired(f"{exc} ({last[0] if last else 'no answer'}){hint}") from exc
    finally:
        store.close()


def readiness(host: str, port: int, timeout: float = 2.0) -> tuple[bool, str]:
    """(ready, why): GET /readyz, which queries the database through the service's port."""
    url = f"http://{host}:{port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200, "ready"
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {exc.code}"
        return False, str(message)
    except (OSError, urllib.error.URLError) as exc:
        return False, f"not answering on {host}:{port} ({getattr(exc, 'reason', exc)})"


def app_states(settings: Settings, layout: StateLayout) -> list[AppState]:
    programs = {}
    if supervisord_pid(layout) is not None:
        try:
            programs = {p.name: p for p in Supervisor(layout).programs()}
        except NotRunningError:
            programs = {}
    states = []
    for name, port in app_ports(settings).items():
        program = programs.get(name)
        state = program.state if program else "STOPPED"
        pid = program.pid if program else None
        if state == "RUNNING":
            ready, detail = readiness(settings.address, port)
        else:
            ready, detail = False, "not started: 'platform.sh start apps'"
        states.append(AppState(name, port, state, pid, ready, detail))
    return states


def ensure_programs(settings: Settings, layout: StateLayout, supervisor: Supervisor) -> list[str]:
    """Programs this host's configuration lists that supervisord does not run yet (the
    applications on a platform started before them, SeaweedFS after storage.backend changed to
    it): prepare them and add them to supervisord, which starts the servers among them.
    Returns the programs added."""
    this = settings.this_host()
    wanted = set(render.APP_PROGRAMS) if this.apps else set()
    wanted |= {p.name for p in seaweedfs.programs(settings, layout, this)}
    wanted |= {p.name for p in monitoring.programs(settings, layout, this)}
    if wanted <= {p.name for p in supervisor.programs()}:
        return []
    tools, problems = find_toolchain(settings)
    if tools is None:
        raise PrerequisiteError("cannot start:\n  " + "\n  ".join(problems))
    user = service_user()
    seaweedfs.prepare(settings, layout, user)
    monitoring.prepare(settings, layout, user)
    text = render.supervisor_config(settings, layout, tools, user)
    layout.supervisor_config().write_text(text, encoding="utf-8")
    added, _ = supervisor.apply_config()
    return added


def start_apps(
    settings: Settings,
    layout: StateLayout,
    *,
    timeout: float = 60.0,
    progress: Progress = _quiet,
) -> list[AppState]:
    """Migrate the schema (write port), then start and wait for every application to be ready.

    Applications already running are left as they are, unless what they run with changed
    (conf/apps.json: the store, the routing, a port...): then they are restarted.
    """
    if supervisord_pid(layout) is None:
        raise NotRunningError(
            f"the platform is not running (state {layout.root}); start it with "
            "'platform.sh start video', which starts the applications too"
        )
    from videodb.db import DataLayer, DataSourceSettings
    from videodb.services.schema import migrate

    progress("applying the schema migrations through the write port")
    layer = DataLayer(DataSourceSettings.for_platform(settings))
    try:
        result = migrate(layer)
    finally:
        layer.dispose()
    if result.changed:
        progress(f"schema migrated from {result.before or 'empty'} to {result.after}")
    before = _read(layout.apps_config())
    config = write_app_files(settings, layout, service_user())
    supervisor = Supervisor(layout)
    ensure_programs(settings, layout, supervisor)
    if before is not None and before != _read(layout.apps_config()):
        running = [n for n in render.APP_PROGRAMS if supervisor.program(n).running]
        if running:
            wait_store_ready(config, timeout, progress)
            progress(f"the applications' configuration changed: restarting {', '.join(running)}")
            for name in running:
                supervisor.stop_program(name)
    host = settings.address
    to_start = [n for n in render.APP_PROGRAMS if not supervisor.program(n).running]
    busy = []
    for name in to_start:
        port = app_ports(settings)[name]
        if not port_is_free(host, port):
            busy.append(
                f"port {port} ({name} app) is in use by {port_holder(port).describe()}; stop that "
                f"process or choose another port with --set apps.{name}_port=N"
            )
    if busy:
        raise PrerequisiteError("cannot start the applications:\n  " + "\n  ".join(busy))
    wait_store_ready(config, timeout, progress)
    for name in to_start:
        progress(f"starting {name} on {host}:{app_ports(settings)[name]}")
        supervisor.start_program(name, wait=False)  # all at once; readiness is awaited below
    progress("waiting for the applications to be ready (database reachable)")
    for name, port in app_ports(settings).items():
        last: list[str] = []

        def ready(port: int = port, last: list[str] = last) -> bool:
            ok, why = readiness(host, port)
            last[:] = [why]
            return ok

        try:
            wait_for(ready, timeout=timeout, what=f"the {name} application ready", interval=0.2)
        except TimeoutExpired as exc:
            why = last[0] if last else "no answer"
            raise TimeoutExpired(f"{exc} ({why}); see 'platform.sh logs {name}'") from exc
    return app_states(settings, layout)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return None


def stop_apps(layout: StateLayout) -> list[str]:
    """Stop the applications (the cluster keeps running). Returns those that were running."""
    if supervisord_pid(layout) is None:
        return []
    supervisor = Supervisor(layout)
    stopped = []
    for program in supervisor.programs():
        if program.name in render.APP_PROGRAMS and program.running:
            supervisor.stop_program(program.name)
            stopped.append(program.name)
    return stopped
