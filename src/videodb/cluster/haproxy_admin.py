"""HAProxy's runtime API (its admin socket): drain or disable a server without a reload."""

from __future__ import annotations

import socket

from videodb.cluster.render import HAPROXY_PROGRAM, haproxy_socket, haproxy_state_file
from videodb.cluster.supervisor import Supervisor
from videodb.errors import ClusterError
from videodb.layout import StateLayout


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
    Supervisor(layout).signal_program(HAPROXY_PROGRAM, "USR2")
