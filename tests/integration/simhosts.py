"""Simulated hosts: Linux network namespaces joined by a bridge, for tests across machines.

Each host is a network namespace with one veth link to a bridge that lives in a namespace of its
own (the "switch"), so nothing is added to the machine's own network: the addresses exist only
inside these namespaces. Faults are made the way a network makes them:

- isolate: the host's port on the switch goes down; its processes keep running;
- lose: every process in the host's namespace is killed, and its port goes down;
- cut: a blackhole route inside one host towards another (a one-way, pairwise cut).

`close()` kills every process left in the namespaces (by pid, from `ip netns pids`) and deletes
them; deleting a namespace removes its links and the bridge with it. A run killed with SIGKILL
cannot close: every namespace name carries the pid of the process that made it
(`vdb<random>p<pid>-<host>`), and the next network made here first removes those whose maker is
gone (`sweep_stale`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import re
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from videodb.cluster.supervisor import pid_alive

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _ip(*args: str) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


def netns_available() -> str | None:
    """None when namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"  # the only reason these tests may skip
    name = f"vdbprobe{secrets.token_hex(3)}"
    _ip("netns", "add", name)  # as root, failing here is an error, never a silent skip
    _ip("netns", "del", name)
    return None


@dataclass
class SimHost:
    name: str
    netns: str
    address: str
    switch_port: str  # the veth end on the bridge, inside the switch namespace


STALE = re.compile(r"^vdb[0-9a-f]+p(\d+)-")
NETNS_DIR = Path("/run/netns")


def owner_pid(netns: str) -> int | None:
    """The pid recorded in a namespace name of ours (None: not one of ours, or an older name)."""
    match = STALE.match(netns)
    return int(match.group(1)) if match else None


def sweep_stale(alive: Callable[[int], bool]) -> list[str]:
    """Remove the namespaces of ours whose maker is no longer alive (a SIGKILLed test run):
    kill what runs in them (by pid, from `ip netns pids`), delete them. What was removed."""
    removed = []
    names = sorted(p.name for p in NETNS_DIR.iterdir()) if NETNS_DIR.is_dir() else []
    for netns in names:
        pid = owner_pid(netns)
        if pid is None or alive(pid):
            continue
        for _ in range(3):
            pids = [int(x) for x in _ip("netns", "pids", netns).split()]
            if not pids:
                break
            for victim in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim, signal.SIGKILL)
            time.sleep(0.2)
        with contextlib.suppress(RuntimeError):
            _ip("netns", "del", netns)
            removed.append(netns)
    return removed


@dataclass
class SimNetwork:
    """A private /24 with a bridge; hosts join it with `add_host`."""

    tag: str = field(default_factory=lambda: f"{secrets.token_hex(2)}p{os.getpid()}")
    subnet: str = field(default_factory=lambda: f"10.249.{random.randint(1, 254)}")
    hosts: dict[str, SimHost] = field(default_factory=dict)
    switch: str = ""

    def __post_init__(self) -> None:
        for netns in sweep_stale(pid_alive):
            print(f"removed a namespace left by a killed test run: {netns}")
        self.switch = f"vdb{self.tag}-switch"
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")

    def add_host(self, name: str) -> SimHost:
        index = len(self.hosts) + 11
        host = SimHost(
            name=name,
            netns=f"vdb{self.tag}-{name}",
            address=f"{self.subnet}.{index}",
            switch_port=f"p-{name}"[:15],
        )
        _ip("netns", "add", host.netns)
        _ip(
            "link", "add", "eth0", "netns", host.netns, "type", "veth",
            "peer", "name", host.switch_port, "netns", self.switch,
        )  # fmt: skip
        _ip("-n", self.switch, "link", "set", host.switch_port, "master", "br0", "up")
        _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip("-n", host.netns, "link", "set", "eth0", "up")
        _ip("-n", host.netns, "link", "set", "lo", "up")
        self.hosts[name] = host
        return host

    # -- faults ---------------------------------------------------------------------------------

    def isolate(self, name: str) -> None:
        """Cut the host off the network; everything on it keeps running."""
        _ip("-n", self.switch, "link", "set", self.hosts[name].switch_port, "down")

    def heal(self, name: str) -> None:
        _ip("-n", self.switch, "link", "set", self.hosts[name].switch_port, "up")

    def lose(self, name: str) -> list[int]:
        """The machine is gone: every process in it killed at once, its link down."""
        self.isolate(name)
        pids = self.pids(name)
        for _ in range(3):  # a process may fork while we kill; kill until none is left
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
            pids = self.pids(name)
            if not pids:
                break
        return pids

    def cut(self, name: str, towards: str) -> None:
        """Packets from `name` to `towards` are dropped (one way)."""
        target = self.hosts[towards].address
        _ip("-n", self.hosts[name].netns, "route", "add", "blackhole", f"{target}/32")

    def uncut(self, name: str, towards: str) -> None:
        target = self.hosts[towards].address
        _ip("-n", self.hosts[name].netns, "route", "del", "blackhole", f"{target}/32")

    # -- running things inside a host ------------------------------------------------------------

    def pids(self, name: str) -> list[int]:
        out = _ip("netns", "pids", self.hosts[name].netns)
        return [int(p) for p in out.split()]

    def argv(self, name: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.hosts[name].netns, *argv]

    @contextlib.contextmanager
    def inside(self, name: str) -> Iterator[None]:
        """The calling thread (and the threads and processes it starts) in the host's network."""
        original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{self.hosts[name].netns}", os.O_RDONLY)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(original)
        finally:
            os.close(target)
            os.close(original)

    def call(self, name: str, fn: Callable[[], T], timeout: float = 120.0) -> T:
        """Run `fn` in a thread inside the host's network namespace and return its result."""
        box: list[T] = []
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with self.inside(name):
                    box.append(fn())
            except BaseException as exc:  # handed to the caller
                errors.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise TimeoutError(f"call inside {name} still running after {timeout} s")
        if errors:
            raise errors[0]
        return box[0]

    def close(self) -> list[str]:
        """Kill what is left in every namespace, delete them all; returns what went wrong."""
        problems = []
        for name in list(self.hosts):
            left = self.lose(name) if Path(f"/run/netns/{self.hosts[name].netns}").exists() else []
            if left:
                problems.append(f"{name}: processes {left} survived SIGKILL")
        for netns in [h.netns for h in self.hosts.values()] + [self.switch]:
            try:
                _ip("netns", "del", netns)
            except RuntimeError as exc:
                problems.append(str(exc))
        return problems
