"""Reader sessions are read-only: a write is refused here, before it reaches any database."""

from __future__ import annotations

import re

from videodb.db.errors import ReadOnlySessionError

# Statements a read may send. WITH is checked for data-modifying parts.
_READ_KEYWORDS = {
    "select",
    "with",
    "show",
    "explain",
    "values",
    "table",
    "fetch",
    "begin",
    "commit",
    "rollback",
    "savepoint",
    "release",
    "set",
    "reset",
    "declare",
    "close",
}
_MODIFYING = re.compile(r"\b(insert|update|delete|merge)\b", re.IGNORECASE)
_COMMENTS = re.compile(r"(--[^\n]*\n)|(/\*.*?\*/)", re.DOTALL)


def check_read_only(sql: str) -> None:
    text = _COMMENTS.sub(" ", sql).strip().lstrip("(").strip()
    keyword = text.split(None, 1)[0].lower() if text else ""
    if keyword not in _READ_KEYWORDS:
        raise ReadOnlySessionError(
            f"{keyword.upper() or 'empty statement'} through a reader session: reader sessions "
            "are read-only; use a writer session for CREATE, UPDATE, DELETE and INSERT"
        )
    if keyword == "with" and _MODIFYING.search(text):
        raise ReadOnlySessionError(
            "a WITH statement that modifies data through a reader session: use a writer session"
        )
    if keyword == "set" and re.search(r"transaction_read_only|read\s+write", text, re.IGNORECASE):
        raise ReadOnlySessionError("a reader session cannot be switched to read-write")
