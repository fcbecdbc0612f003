"""Talk to supervisord, the process supervisor that runs etcd, Patroni and HAProxy."""

from __future__ import annotations

import os
import socket
import sys
import time
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from supervisor.xmlrpc import SupervisorTransport, UnixStreamHTTPConnection

from videodb.errors import ClusterError, NotRunningError
from videodb.layout import StateLayout
from videodb.runner import run_tool
from videodb.waiting import wait_for


@dataclass(frozen=True)
class ProgramStatus:
    """One supervised program as supervisord sees it."""

    name: str
    state: str  # RUNNING, STARTING, STOPPED, BACKOFF, EXITED, FATAL, ...
    pid: int | None
    uptime_s: float | None

    @property
    def running(self) -> bool:
        return self.state == "RUNNING"


def supervisord_binary() -> Path:
    return Path(sys.executable).parent / "supervisord"


def pid_alive(pid: int) -> bool:
    """Whether `pid` runs; an exited process its parent has not reaped yet (a zombie) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def supervisord_pid(layout: StateLayout) -> int | None:
    """The pid of this state directory's supervisord, if it is alive."""
    try:
        pid = int(layout.supervisor_pidfile().read_text().strip())
    except (OSError, ValueError):
        return None
    if not pid_alive(pid):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return None
    return pid if "supervisord" in cmdline else None


# Longer than any call waits for (stopping a Patroni: its stopwaitsecs, 90 s), so that a hung
# supervisord (left SIGSTOPped, say) is an error after this long, not a hang.
CALL_TIMEOUT_S = 120.0


class _TimedUnixConnection(UnixStreamHTTPConnection):  # type: ignore[misc]
    def __init__(self, socketfile: str, timeout: float) -> None:
        super().__init__("localhost")
        self.socketfile = socketfile
        self.timeout_s = timeout

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout_s)
        self.sock.connect(self.socketfile)


class Supervisor:
    """A client for one supervisord over its private unix socket."""

    def __init__(self, layout: StateLayout, timeout: float = CALL_TIMEOUT_S) -> None:
        self.layout = layout
        path = str(layout.supervisor_socket())
        transport = SupervisorTransport(None, None, f"unix://{path}")
        transport._get_connection = lambda: _TimedUnixConnection(path, timeout)
        self._transport = transport
        self._proxy: Any = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def _call(self, method: str, *args: Any) -> Any:
        target = self._proxy.supervisor
        try:
            return getattr(target, method)(*args)
        except xmlrpc.client.Fault as exc:
            raise ClusterError(f"supervisord refused {method}{args}: {exc.faultString}") from exc
        except OSError as exc:
            raise NotRunningError(
                f"supervisord is not answering on {self.layout.supervisor_socket()} ({exc}); "
                "is the platform running? try 'platform.sh status'"
            ) from exc
        finally:
            # One connection per call: a client dropped without close() leaves no socket open,
            # and a timed-out connection is never reused.
            self._transport.close()

    def answering(self) -> bool:
        try:
            return bool(self._call("getState")["statename"] == "RUNNING")
        except ClusterError:
            return False

    def programs(self) -> list[ProgramStatus]:
        infos = cast(list[dict[str, Any]], self._call("getAllProcessInfo"))
        result = []
        for info in infos:
            pid = int(info["pid"]) or None
            uptime = float(info["now"] - info["start"]) if pid else None
            result.append(ProgramStatus(info["name"], info["statename"], pid, uptime))
        return result

    def program(self, name: str) -> ProgramStatus:
        for prog in self.programs():
            if prog.name == name:
                return prog
        raise ClusterError(f"supervisord has no program {name!r}")

    def start_program(self, name: str, wait: bool = True) -> None:
        """Start a program; with `wait`, until supervisord sees it running for startsecs."""
        if not self.program(name).running:
            self._call("startProcess", name, wait)

    def stop_program(self, name: str) -> None:
        if self.program(name).state in ("RUNNING", "STARTING", "BACKOFF"):
            self._call("stopProcess", name, True)

    def signal_program(self, name: str, signal: str) -> None:
        self._call("signalProcess", name, signal)

    def apply_config(self) -> tuple[list[str], list[str]]:
        """Re-read supervisord.conf: start added programs, stop and drop removed ones."""
        added, _changed, removed = self._call("reloadConfig")[0]
        for name in removed:
            if self.program(name).state in ("RUNNING", "STARTING", "BACKOFF"):
                self._call("stopProcess", name, True)
            self._call("removeProcessGroup", name)
        for name in added:
            self._call("addProcessGroup", name)
        return list(added), list(removed)

    def shutdown(self) -> None:
        self._call("shutdown")


def start_supervisord(layout: StateLayout, timeout: float = 15.0) -> Supervisor:
    """Start supervisord, detached, beneath a subreaper that reaps orphans at once
    (cluster/reaper.py), and wait until it answers on its socket."""
    binary = supervisord_binary()
    if not binary.exists():
        raise ClusterError(
            f"{binary} not found; run the CLI from the project's environment ('platform.sh ...')"
        )
    output = layout.logs / "supervisord.out"
    # Every program inherits supervisord's environment: a clean one (no PGPASSWORD...).
    result = run_tool(
        [
            sys.executable,
            "-m",
            "videodb.cluster.reaper",
            str(layout.root),
            str(output),
            str(binary),
            "-n",
            "-c",
            str(layout.supervisor_config()),
        ],
        what="supervisord",
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise ClusterError(
            f"supervisord failed to start (exit {result.returncode}): "
            f"{(result.stderr or result.stdout).strip()}; see {layout.program_log('supervisord')}"
        )
    client = Supervisor(layout)

    def answering() -> bool:
        if client.answering():
            return True
        said = _tail(output)
        if "Error" in said or "error:" in said:
            raise ClusterError(f"supervisord did not start: {said}; see {output}")
        return False

    wait_for(
        answering,
        timeout=timeout,
        what="supervisord answering",
        hint=f"see {layout.program_log('supervisord')} and {output}",
    )
    return client


def _tail(path: Path, size: int = 2000) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - size))
            return f.read().decode(errors="replace").strip()
    except OSError:
        return ""


def stop_supervisord(layout: StateLayout, timeout: float = 120.0) -> int | None:
    """Ask supervisord to stop every program and exit; wait for its pid to go. Returns that pid."""
    pid = supervisord_pid(layout)
    if pid is None:
        return None
    try:
        Supervisor(layout).shutdown()
    except NotRunningError:
        os.kill(pid, 15)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid_alive(pid):
        raise ClusterError(
            f"supervisord (pid {pid}) still running {timeout:.0f} s after shutdown; "
            f"see {layout.program_log('supervisord')}"
        )
    return pid
