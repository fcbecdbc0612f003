"""The CLI's last resort: an error nobody planned for becomes one line and a logged traceback.

Library code raises `VideoDBError` subclasses with a message made for people; anything else that
escapes (a bug, an OS error nobody wrapped) must still not print a traceback at the user: it is
written here, with the command line and the time, and the user is told where.
"""

from __future__ import annotations

import os
import tempfile
import traceback
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from videodb.cli_log import shown_command


def log_file() -> Path:
    """~/.cache/videodb/errors.log (XDG_CACHE_HOME honoured), or the temporary directory."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "videodb" / "errors.log"


def record(exc: BaseException, argv: list[str]) -> Path:
    """Append the traceback to the log; returns the file written."""
    text = (
        f"--- {datetime.now(UTC).isoformat(timespec='seconds')} pid {os.getpid()}: "
        f"{shown_command(argv)}\n" + "".join(traceback.format_exception(exc))
    )
    for path in (log_file(), Path(tempfile.gettempdir()) / f"videodb-errors-{os.getuid()}.log"):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as f:
                f.write(text)
            return path
        except OSError:
            continue
    return Path("/dev/null")


def one_line(exc: BaseException) -> str:
    """What happened, in one line, with the next step where one is known."""
    if isinstance(exc, psycopg.Error):
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        state = f" (SQLSTATE {exc.sqlstate})" if exc.sqlstate else ""
        return (
            f"PostgreSQL: {first}{state}; see 'platform.sh status' and the node's log "
            "('platform.sh logs NODE')"
        )
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}; check the path and its permissions"
    detail = (str(exc).strip().splitlines() or [""])[0]
    return f"unexpected {type(exc).__name__}" + (f": {detail}" if detail else "")
