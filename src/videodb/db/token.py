"""Read-your-writes tokens: the WAL position and timeline of a committed write."""

from __future__ import annotations

import re
from dataclasses import dataclass

from videodb.errors import VideoDBError

HEADER = "X-Consistency-Token"
COOKIE = "consistency_token"

_TOKEN = re.compile(r"^(\d{1,9}):([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")


class TokenError(VideoDBError):
    """A consistency token that cannot be parsed."""

    exit_code = 2


def parse_lsn(text: str) -> int:
    hi, _, lo = text.partition("/")
    if not lo:
        raise TokenError(f"{text!r} is not a WAL position like 0/16B3748")
    return (int(hi, 16) << 32) | int(lo, 16)


def format_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


@dataclass(frozen=True, order=True)
class ConsistencyToken:
    """`timeline:lsn`, e.g. `2:0/3000148`: a read carrying it must see that write."""

    timeline: int
    lsn: int

    def __str__(self) -> str:
        return f"{self.timeline}:{format_lsn(self.lsn)}"

    @classmethod
    def parse(cls, text: str) -> ConsistencyToken:
        match = _TOKEN.match(text.strip())
        if not match:
            shown = text if len(text) <= 40 else text[:40] + "..."
            raise TokenError(
                f"malformed consistency token {shown!r}: expected TIMELINE:LSN such as "
                "'2:0/3000148', as returned in the X-Consistency-Token header after a write"
            )
        timeline = int(match.group(1))
        if timeline < 1:
            raise TokenError(f"malformed consistency token {text!r}: timeline must be >= 1")
        return cls(timeline, (int(match.group(2), 16) << 32) | int(match.group(3), 16))

    def newest(self, other: ConsistencyToken | None) -> ConsistencyToken:
        return self if other is None or self >= other else other
