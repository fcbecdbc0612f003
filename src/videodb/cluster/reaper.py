"""Start supervisord under a child subreaper that reaps orphans at once, detached from the caller.

Patroni double-forks PostgreSQL, so a postmaster's parent is the nearest subreaper, or PID 1. PID 1
on these machines reaps late: an exited postmaster stayed a zombie for about 1.4 s, Patroni's
`is_running()` still saw it, and Patroni slept a second more in its shutdown before a switchover
went on (issue 14: 2.39 s write pause). supervisord itself would reap late too: it polls with a
one-second timeout, and Python resumes the poll after its SIGCHLD handler (PEP 475), so an orphan
waited up to a second. This process is the subreaper instead: it forks supervisord (`-n`: a
daemonizing supervisord would leave it) and blocks in `waitpid(-1)`, which returns the moment any
orphan beneath it exits. It exits with supervisord's status; signals it gets go to supervisord.

    python -m videodb.cluster.reaper ROOT OUTPUT SUPERVISORD ARG...
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from types import FrameType

PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2)


def set_child_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(errno)}")


def reap_until(child: int) -> int:
    """Reap every process that exits beneath us until `child` does; its exit status."""
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 1
        if pid == child:
            return os.waitstatus_to_exitcode(status) & 0xFF


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(
            "usage: python -m videodb.cluster.reaper ROOT OUTPUT SUPERVISORD ARG...",
            file=sys.stderr,
        )
        return 2
    root, output, binary, *args = argv
    if os.fork():
        return 0  # the caller waits for supervisord's socket, not for this process
    os.setsid()
    set_child_subreaper()
    os.chdir(root)
    os.umask(0o022)
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    child = os.fork()
    if child == 0:
        os.execv(binary, [binary, *args])

    def forward(signum: int, _frame: FrameType | None) -> None:
        os.kill(child, signum)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    return reap_until(child)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
