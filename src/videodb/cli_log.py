"""What the CLI's state-changing commands did, in the state directory's logs/cli.log.

Promotions, switchovers, replicas added and removed, backups taken and restored, settings
applied live: the library logs them (module loggers under "videodb"), and this file keeps them
beside the servers' logs ('platform.sh logs cli').
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s [pid %(process)d] %(name)s: %(message)s"

_attached: set[Path] = set()
_SECRET_ASSIGNMENT = re.compile(r"^((?:[a-z0-9_]+\.)*[a-z0-9_]*(?:password|secret)[a-z0-9_]*=).*$")


def shown_command(argv: list[str] | None = None) -> str:
    """This command line as logs and messages show it: `platform.sh ...`, with the value of any
    `--set ...password=VALUE` replaced, so a secret given as a flag never lands in a file."""
    words = (sys.argv if argv is None else argv)[1:]
    return " ".join(["platform.sh", *(_hide_secret(w) for w in words)])


def _hide_secret(word: str) -> str:
    prefix = "--set=" if word.startswith("--set=") else ""
    return prefix + _SECRET_ASSIGNMENT.sub(r"\1********", word[len(prefix) :])


def _make_public_dirs(directory: Path) -> None:
    """Create `directory` and its missing parents as 0755, whatever the umask: the first command
    creates the state directory here, and under an umask of 0077 PostgreSQL's OS user could not
    enter it (start would refuse it). The state preparation sets the same modes."""
    missing = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    directory.mkdir(parents=True, exist_ok=True)
    for created in missing:
        os.chmod(created, 0o755)


def log_to(logs_dir: Path) -> Path | None:
    """Append the "videodb" loggers' INFO and above to logs_dir/cli.log (once per process)."""
    path = logs_dir / "cli.log"
    if path in _attached:
        return path
    try:
        _make_public_dirs(logs_dir)
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError:
        return None  # a log that cannot be written must not stop the command
    handler.setFormatter(logging.Formatter(FORMAT))
    logger = logging.getLogger("videodb")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    _attached.add(path)
    logger.info("%s (uid %d)", shown_command(), os.getuid())
    return path
