"""`platform.sh config`: the effective settings as TOML, each value annotated with its source.

The output is itself a valid config file (`--config` accepts it): the ports already include any
port offset, so `port_offset` is shown as a comment and not set again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

COMMENT_COLUMN = 44


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string is a JSON string
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def _key(key: str) -> str:
    bare = key.replace("_", "").replace("-", "").isalnum()
    return key if bare else json.dumps(key)


def _line(key: str, value: Any, source: str) -> str:
    if "password" in key:
        return f"# {_key(key)} is redacted".ljust(COMMENT_COLUMN) + f"  # {source}"
    if value is None:
        return f"# {_key(key)} is not set".ljust(COMMENT_COLUMN) + f"  # {source}"
    return f"{_key(key)} = {_value(value)}".ljust(COMMENT_COLUMN) + f"  # {source}"


def _is_table(value: Any) -> bool:
    return isinstance(value, Mapping)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _table(
    lines: list[str],
    header: str | None,
    data: Mapping[str, Any],
    prefix: str,
    sources: Mapping[str, str],
) -> None:
    if header is not None:
        lines += ["", header]
    nested: list[tuple[str, Any]] = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if _is_table(value) or _is_table_array(value):
            nested.append((key, value))
            continue
        lines.append(_line(key, value, sources.get(dotted, "default")))
    for key, value in nested:
        dotted = f"{prefix}{key}"
        if _is_table(value):
            _table(lines, f"[{dotted}]", value, dotted + ".", sources)
        else:
            for i, item in enumerate(value):
                _table(lines, f"[[{dotted}]]", item, f"{dotted}.{i}.", sources)


def _port_keys(data: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys of every port (every port moves with the offset: see config.py)."""
    found: list[str] = []
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if _is_table(value):
            found += _port_keys(value, dotted + ".")
        elif _is_table_array(value):
            for i, item in enumerate(value):
                found += _port_keys(item, f"{dotted}.{i}.")
        elif key == "port" or key.endswith("_port"):
            found.append(dotted)
    return found


def render_config(
    settings: Mapping[str, Any], sources: Mapping[str, str], config_file: Path | None
) -> str:
    """`settings` as TOML; `sources` names where each overridden dotted key came from."""
    data = dict(settings)
    offset = data.pop("port_offset", 0)
    lines = [
        "# The effective configuration (secrets redacted); each value's source on its right.",
        f"# config file: {config_file or '(none: built-in defaults)'}",
    ]
    if offset:
        source = sources.get("port_offset", "default")
        lines.append(f"# port_offset = {offset}: already added to every port below ({source})")
    if offset:
        sources = dict(sources)
        for dotted in _port_keys(data):
            sources[dotted] = f"{sources.get(dotted, 'default')} + port_offset {offset}"
    _table(lines, None, data, "", sources)
    return "\n".join(lines) + "\n"
