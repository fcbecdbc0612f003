"""Run an external tool the one way: a deadline, a clean libpq environment, a clear error.

Every PostgreSQL tool, HAProxy's config check and supervisord are started through here (or, for
the few that stream their output, with `tool_env()`), so that none can hang the CLI and none sees
the operator's `PGPASSWORD`, `PGSERVICE`... (see `videodb.pgenv`).
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

from videodb.errors import ClusterError
from videodb.layout import ServiceUser, as_user
from videodb.pgenv import clean_env

# A deadline for tools whose work grows with the data (a restore, a checksum pass): long enough
# for a large database on slow disks, short enough that a hung tool is an error, not a hang.
LONG_TOOL_S = 6 * 3600.0

# What a tool printed last is what says why it failed: this much of it goes into the error.
TAIL_LINES = 5


class ToolError(ClusterError):
    """An external tool failed, or did not finish in time."""

    def __init__(self, message: str, returncode: int | None, output: str) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.output = output


def tool_env(**explicit: str) -> dict[str, str]:
    """This process's environment without libpq variables, plus `explicit` (e.g. PGPASSFILE)."""
    return clean_env(None, **explicit)


def tail(text: str, lines: int = TAIL_LINES) -> str:
    """The last non-empty lines of a tool's output, joined for a one-line message."""
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()]
    shown = kept[-lines:]
    more = f" (after {len(kept) - lines} more lines)" if len(kept) > lines else ""
    return "; ".join(shown) + more if shown else "no message"


def run_tool(
    argv: Sequence[str],
    *,
    what: str,
    timeout: float,
    user: ServiceUser | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    hint: str = "",
) -> subprocess.CompletedProcess[str]:
    """Run `argv` (as `user`, when given) and wait at most `timeout` seconds.

    `env` is added to the clean environment. With `check`, a non-zero exit raises ToolError
    naming `what`, the exit code and the tail of its output; a timeout always raises.
    """
    command = list(argv) if user is None else as_user(user, list(argv))
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            env=tool_env(**dict(env or {})),
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        output = _text(exc.stderr) or _text(exc.stdout)
        raise ToolError(
            f"{what} did not finish in {timeout:g} s and was stopped"
            + (f"; it printed: {tail(output)}" if output.strip() else "")
            + (f"; {hint}" if hint else ""),
            None,
            output,
        ) from exc
    except OSError as exc:
        raise ToolError(f"{what} could not be started: {exc}", None, "") from exc
    if check and done.returncode != 0:
        output = done.stderr or done.stdout
        raise ToolError(
            f"{what} failed (exit {done.returncode}): {tail(output)}"
            + (f"; {hint}" if hint else ""),
            done.returncode,
            output,
        )
    return done


@contextmanager
def deadline(
    process: subprocess.Popen[bytes], what: str, timeout: float
) -> Iterator[Callable[[], bool]]:
    """For a tool whose output is read as it runs: kill it after `timeout` seconds.

    Yields `expired()`; after the block, a killed tool raises ToolError naming `what`.
    """
    fired = threading.Event()

    def kill() -> None:
        fired.set()
        process.kill()

    timer = threading.Timer(timeout, kill)
    timer.daemon = True
    timer.start()
    try:
        yield fired.is_set
    finally:
        timer.cancel()
    if fired.is_set():
        raise ToolError(f"{what} did not finish in {timeout:g} s and was stopped", None, "")


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value
