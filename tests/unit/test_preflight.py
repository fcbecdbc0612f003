"""Pre-start checks: ports in use, missing binaries (no servers started)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from videodb.cluster.preflight import find_toolchain, port_problems
from videodb.config import load_settings
from videodb.ports import free_ports, port_holder, port_is_free


def test_port_in_use_names_the_holder_and_the_key_to_change() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert not port_is_free("127.0.0.1", port)
        holder = port_holder(port)
        assert holder.pid == os.getpid()
        settings = load_settings(None, env={}, assignments=[f"haproxy.write_port={port}"]).settings
        problems = [p for p in port_problems(settings) if str(port) in p]
    assert len(problems) == 1
    assert f"port {port} (haproxy write) is in use by pid {os.getpid()}" in problems[0]
    assert "--set haproxy.write_port=N" in problems[0]


def test_free_ports_are_distinct_and_free() -> None:
    ports = free_ports(5)
    assert len(set(ports)) == 5
    assert all(port_is_free("127.0.0.1", p) for p in ports)


def test_missing_binaries_say_what_to_install(tmp_path: Path) -> None:
    settings = load_settings(
        None,
        env={},
        assignments=[
            f"postgresql.bin_dir={tmp_path}",
            "haproxy.binary=haproxy-not-installed",
            "etcd.binary=etcd-not-installed",
        ],
    ).settings
    tools, problems = find_toolchain(settings)
    assert tools is None
    text = "\n".join(problems)
    assert f"not found in {tmp_path}" in text and "apt-get install -y postgresql-15" in text
    assert "haproxy-not-installed not found; install it with 'apt-get install -y haproxy'" in text
    assert "apt-get install -y etcd-server" in text
