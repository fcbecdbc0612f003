"""HTTP Range (RFC 9110 section 14) for one representation of known size: bytes ranges only."""

from __future__ import annotations

import re
from dataclasses import dataclass

_SPEC = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")


class RangeNotSatisfiable(Exception):
    """416: the message says why; Content-Range: bytes */size goes with it."""


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end}/{size}"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The one range to send, or None for the whole representation.

    None also for several ranges (a server may ignore Range; the whole body is valid) and for
    units other than bytes. A malformed or unsatisfiable bytes range raises RangeNotSatisfiable.
    """
    if header is None:
        return None
    unit, sep, specs = header.strip().partition("=")
    if not sep:
        raise RangeNotSatisfiable(
            f"malformed Range {header!r}: expected bytes=START-END, bytes=START- or bytes=-SUFFIX"
        )
    if unit.strip().lower() != "bytes":
        return None
    parts = specs.split(",")
    if len(parts) > 1:
        return None
    match = _SPEC.match(parts[0])
    if not match or (not match.group(1) and not match.group(2)):
        raise RangeNotSatisfiable(
            f"malformed Range {header!r}: expected bytes=START-END, bytes=START- or bytes=-SUFFIX"
        )
    first, last = match.group(1), match.group(2)
    if not first:  # suffix: the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(f"Range {header!r} asks for no bytes of {size}")
        return ByteRange(max(0, size - suffix), size - 1)
    start = int(first)
    end = int(last) if last else size - 1
    if last and end < start:
        raise RangeNotSatisfiable(f"malformed Range {header!r}: the end is before the start")
    if start >= size:
        raise RangeNotSatisfiable(
            f"Range {header!r} starts at or after the end of the {size}-byte video"
        )
    return ByteRange(start, min(end, size - 1))


def etag_matches(header: str | None, etag: str, *, weak: bool) -> bool:
    """If-None-Match (weak comparison) or If-Range (strong) against our strong ETag."""
    if header is None:
        return False
    header = header.strip()
    if header == "*":
        return weak
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate.startswith("W/"):
            if not weak:
                continue
            candidate = candidate[2:]
        if candidate == etag:
            return True
    return False
