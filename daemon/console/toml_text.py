"""A spec's canonical form as TOML text, for the console's spec view and revision diffs.

`canonical_toml(text)` parses a stored spec (`config.parse.parse_spec`) and writes
`config.canonical.spec_to_dict` back as TOML: the same meaning always gives the same text,
keys in the canonical order, so a diff of two revisions shows what changed in meaning and
not how it was written. `to_toml` writes plain data (str, int, float, bool, lists, tables,
arrays of tables); the canonical dict holds nothing else. A spec that no longer parses (an
older berth's) is shown as it was written.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from config.canonical import spec_to_dict
from config.errors import SpecError
from config.parse import parse_spec


def canonical_toml(text: str, *, source: str = "<spec>") -> str:
    """The canonical TOML of spec `text`, or `text` itself when it does not parse."""
    try:
        spec = parse_spec(text, source=source)
    except SpecError:
        return text
    return to_toml(spec_to_dict(spec))


def to_toml(data: Mapping[str, Any]) -> str:
    lines: list[str] = []
    _table(lines, data, ())
    return "\n".join(lines).strip("\n") + "\n"


def _table(lines: list[str], data: Mapping[str, Any], path: tuple[str, ...]) -> None:
    tables: list[tuple[str, Mapping[str, Any]]] = []
    arrays: list[tuple[str, list[Mapping[str, Any]]]] = []
    for key, value in data.items():
        if isinstance(value, Mapping):
            tables.append((key, value))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            arrays.append((key, value))
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, table in tables:
        sub = (*path, key)
        if any(not isinstance(v, Mapping) for v in table.values()) or not table:
            lines.extend(("", f"[{'.'.join(_key(k) for k in sub)}]"))
        _table(lines, table, sub)
    for key, items in arrays:
        sub = (*path, key)
        for item in items:
            lines.extend(("", f"[[{'.'.join(_key(k) for k in sub)}]]"))
            _table(lines, item, sub)


def _key(key: str) -> str:
    if key and all(c.isascii() and (c.isalnum() or c in "-_") for c in key):
        return key
    return _string(key)


def _string(s: str) -> str:
    # JSON's escapes are TOML's basic string escapes for everything json.dumps writes.
    return json.dumps(s, ensure_ascii=False)


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        inner = ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    if value is None:
        return '""'  # TOML has no null; the canonical form writes none (checked in tests)
    return _string(str(value))
