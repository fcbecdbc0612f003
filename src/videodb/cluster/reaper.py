"""Start supervisord as a child subreaper, detached from the caller.

Patroni double-forks PostgreSQL, so a postmaster's parent is the nearest subreaper, or PID 1. PID 1
on these machines reaps late: an exited postmaster stays a zombie for about 1.4 s, Patroni's
`is_running()` still sees it, and Patroni sleeps a second more in its shutdown before a switchover
goes on (issue 14: the write pause fell from 2.39 s to 1.41 s with supervisord as the subreaper).
`prctl(PR_SET_CHILD_SUBREAPER)` does not survive a fork, so supervisord must not daemonize itself
(`nodaemon=true`): this launcher forks once (its parent returns at once, as a daemonizing
supervisord did), starts a session, sets the flag, which survives `execv`, and becomes supervisord.

    python -m videodb.cluster.reaper ROOT OUTPUT SUPERVISORD ARG...
"""

from __future__ import annotations

import ctypes
import os
import sys

PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>


def set_child_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(errno)}")


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
    os.execv(binary, [binary, *args])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
