"""HAProxy's runtime API (its admin socket): drain or disable a server without a reload."""

from __future__ import annotations

import logging
import socket
import time

from videodb.cluster.render import HAPROXY_PROGRAM, haproxy_socket, haproxy_state_file
from videodb.cluster.supervisor import Supervisor
from videodb.errors import ClusterError
from videodb.layout import StateLayout

log = logging.getLogger(__name__)


def haproxy_command(layout: StateLayout, command: str, timeout: float = 5.0) -> str:
    path = haproxy_socket(layout)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except OSError as exc:
        raise ClusterError(f"HAProxy admin socket {path} refused {command!r}: {exc}") from exc
    return b"".join(chunks).decode(errors="replace").strip()


def set_server_state(layout: StateLayout, backend: str, server: str, state: str) -> None:
    """state: ready, drain or maint. HAProxy answers nothing on success, a reason otherwise."""
    command = f"set server {backend}/{server} state {state}"
    answer = haproxy_command(layout, command)
    if answer:
        raise ClusterError(f"HAProxy refused {command!r}: {answer}")


def reload_haproxy(layout: StateLayout) -> None:
    """A graceful reload (SIGUSR2: old workers finish their sessions) that keeps every server's
    state: without the saved state the new worker would take every server for UP until its first
    checks, and could route a write to a replica meanwhile."""
    state = haproxy_command(layout, "show servers state")
    path = haproxy_state_file(layout)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(state + "\n", encoding="utf-8")
    tmp.chmod(0o644)
    tmp.replace(path)
    before = worker_pid(layout)
    supervisor = Supervisor(layout)
    for attempt in range(1, RELOAD_ATTEMPTS + 1):
        supervisor.signal_program(HAPROXY_PROGRAM, "USR2")
        deadline = time.monotonic() + RELOAD_WAIT_S
        while time.monotonic() < deadline:
            try:
                if worker_pid(layout) not in (None, before):
                    return
            except ClusterError:
                pass  # the socket moves to the new worker
            time.sleep(0.05)
        # Seen once in CI: the master failed to open the CA file it had just validated and kept
        # the old worker ("Loading failure!"); a second signal loaded it.
        log.warning("HAProxy reload %d of %d loaded no new worker", attempt, RELOAD_ATTEMPTS)
    raise ClusterError(
        f"HAProxy did not load its new configuration after {RELOAD_ATTEMPTS} reloads; the old "
        f"worker still runs with the previous one. See {layout.program_log(HAPROXY_PROGRAM)} "
        "('Loading failure!' and the lines before it), fix the cause, then run "
        "'platform.sh start video' again"
    )


RELOAD_ATTEMPTS = 3
RELOAD_WAIT_S = 10.0


def worker_pid(layout: StateLayout) -> int | None:
    """The pid of the worker answering on the admin socket (`show info`)."""
    for line in haproxy_command(layout, "show info", timeout=2.0).splitlines():
        if line.startswith("Pid:"):
            return int(line.split(":", 1)[1])
    return None
