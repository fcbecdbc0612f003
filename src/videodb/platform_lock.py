"""One lock per state directory around every command that changes the platform's state.

Two mutating commands on one state directory (a `start` while a `restore` swaps the data, two
`add-replica` at once) would interleave half-written configuration. The second one is refused at
once, naming the holder: its pid, its command line and since when. The lock is `flock` on
`platform.lock` in the state directory, so it dies with its holder (a killed command leaves no
stale lock), and it is re-entrant within one process (`restart` runs `stop` then `start`;
`restore` stops and starts).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from videodb.cli_log import shown_command
from videodb.errors import ClusterError


class PlatformBusyError(ClusterError):
    """Another command holds the state directory's lock."""

    exit_code = 4


LOCK_NAME = "platform.lock"

# Locks this process holds: path -> how many nested holders.
_held: dict[Path, int] = {}


def describe_holder(raw: str) -> str:
    try:
        holder = json.loads(raw)
        return f"pid {holder['pid']} ({holder['command']}, since {holder['since']})"
    except (ValueError, KeyError, TypeError):
        return f"pid {raw.strip() or '?'}"


@contextmanager
def exclusive(lock_file: Path, what: str, command: str | None = None) -> Iterator[None]:
    """Hold `lock_file` for the block; refuse at once (PlatformBusyError) if another holds it."""
    key = lock_file.absolute()
    if _held.get(key):
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace")
            raise PlatformBusyError(
                f"{what} is busy: {describe_holder(holder)} holds {lock_file}; wait for it to "
                "finish, then run this again"
            ) from None
        me = {
            "pid": os.getpid(),
            "command": command or shown_command(),
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        _held[key] = 1
        try:
            yield
        finally:
            del _held[key]
    finally:
        os.close(fd)


def lock_path(state_dir: Path) -> Path:
    return state_dir / LOCK_NAME


@contextmanager
def platform_lock(state_dir: Path, command: str | None = None) -> Iterator[None]:
    """The state directory's lock, for a command that changes the platform."""
    with exclusive(lock_path(state_dir), f"the platform in {state_dir}", command):
        yield
