"""Walking a parsed TOML document: typed reads, field paths, and every problem collected.

A `Reader` wraps one table. Each read names a key and a converter; the converter either
returns the value or raises ValueError with a message, which becomes a `Problem` at the
key's full path. Reads never raise, so one pass finds every problem in a document. Keys
never read are reported by `close()` as unknown, which is how a misspelt key such as
`health.readiness.perod` is an error rather than silently ignored.

Conventions: a read that fails returns None (or the default), and the key is remembered as
bad (`ok()`), so cross-field checks can skip fields that already have a problem instead of
piling a second, confusing message on top.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import TypeVar

from config.errors import Problem, WithheldValueError, show_value
from config.units import format_duration, parse_duration, parse_size

T = TypeVar("T")
Converter = Callable[[object], T]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def join_path(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    shown = key if _BARE_KEY.fullmatch(key) else show_value(key)
    return f"{path}.{shown}" if path else shown


class Reader:
    def __init__(self, data: Mapping[str, object], path: str, problems: list[Problem]) -> None:
        self.data = data
        self.path = path
        self.problems = problems
        self._seen: set[str] = set()
        self._bad: set[str] = set()

    def __repr__(self) -> str:
        return f"Reader({self.path or '<root>'!s}, problems={len(self.problems)})"

    def path_of(self, key: str) -> str:
        return join_path(self.path, key)

    def has(self, key: str) -> bool:
        return key in self.data

    def problem(self, key: str, message: str, got: object | None = None) -> None:
        """Record a problem at `key` (e.g. from a cross-field check) and mark it bad."""
        self._bad.add(key)
        self.problems.append(Problem(self.path_of(key), message, got))

    def ok(self, *keys: str) -> bool:
        """No problem has been recorded at any of `keys`."""
        return not any(k in self._bad for k in keys)

    def optional(self, key: str, convert: Converter[T]) -> T | None:
        """The converted value, or None when absent or wrong (then a problem is recorded)."""
        self._seen.add(key)
        if key not in self.data:
            return None
        raw = self.data[key]
        try:
            return convert(raw)
        except WithheldValueError as exc:
            self.problem(key, str(exc))
            return None
        except ValueError as exc:
            self.problem(key, str(exc), raw)
            return None

    def get(self, key: str, convert: Converter[T], default: T) -> T:
        value = self.optional(key, convert)
        return default if value is None else value

    def required(self, key: str, convert: Converter[T]) -> T | None:
        if key not in self.data:
            self._seen.add(key)
            self.problem(key, "required")
            return None
        return self.optional(key, convert)

    def table(self, key: str, *, required: bool = False) -> Reader | None:
        """The sub-table at `key` as a Reader (None when absent or not a table)."""
        self._seen.add(key)
        if key not in self.data:
            if required:
                self.problem(key, "required")
            return None
        raw = self.data[key]
        if not isinstance(raw, Mapping):
            self.problem(key, f"must be a table ([{self.path_of(key)}])", raw)
            return None
        return Reader(raw, self.path_of(key), self.problems)

    def tables(self, key: str) -> list[Reader]:
        """The array of tables at `key` ([[key]]), one Reader each; [] when absent."""
        self._seen.add(key)
        raw = self.data.get(key)
        if raw is None:
            return []
        if not isinstance(raw, list):
            self.problem(key, f"must be an array of tables ([[{self.path_of(key)}]])", raw)
            return []
        out: list[Reader] = []
        for i, item in enumerate(raw):
            item_path = join_path(self.path_of(key), i)
            if not isinstance(item, Mapping):
                self._bad.add(key)
                self.problems.append(Problem(item_path, "must be a table", item))
                continue
            out.append(Reader(item, item_path, self.problems))
        return out

    def close(self) -> None:
        """Report every key that no read asked for."""
        for key in self.data:
            if key not in self._seen:
                self.problems.append(Problem(self.path_of(key), "unknown key"))


# Converters: each takes the raw TOML value and returns the typed one or raises ValueError.


def as_str(raw: object) -> str:
    if not isinstance(raw, str):
        raise ValueError("must be a string")
    return raw


def as_bool(raw: object) -> bool:
    if not isinstance(raw, bool):
        raise ValueError("must be true or false")
    return raw


def as_int(lo: int | None = None, hi: int | None = None) -> Converter[int]:
    def convert(raw: object) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ValueError("must be an integer")
        _check_range(raw, lo, hi)
        return raw

    return convert


def as_number(
    lo: float | None = None, hi: float | None = None, *, above: float | None = None
) -> Converter[float]:
    """A finite int or float; `above` is an exclusive lower bound."""

    def convert(raw: object) -> float:
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise ValueError("must be a number")
        value = float(raw)
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        if above is not None and value <= above:
            raise ValueError(f"must be > {_num(above)}")
        _check_range(value, lo, hi)
        return value

    return convert


def as_duration(
    lo: float | None = None, hi: float | None = None, *, above: float | None = None
) -> Converter[float]:
    """A duration string ("10s") in seconds; bounds in seconds, `above` exclusive."""

    def convert(raw: object) -> float:
        if not isinstance(raw, str):
            raise ValueError('must be a duration string such as "10s" or "500ms"')
        value = parse_duration(raw)
        if above is not None and value <= above:
            raise ValueError(f"must be longer than {_show_seconds(above)}")
        if lo is not None and value < lo:
            raise ValueError(f"must be at least {_show_seconds(lo)}")
        if hi is not None and value > hi:
            raise ValueError(f"must be at most {_show_seconds(hi)}")
        return value

    return convert


def as_size(
    lo: int | None = None,
    *,
    lo_text: str | None = None,
    hi: int | None = None,
    hi_text: str | None = None,
) -> Converter[int]:
    """A size string ("512Mi") or a plain integer of bytes; `*_text` shows a bound."""

    def convert(raw: object) -> int:
        if isinstance(raw, str):
            value = parse_size(raw)
        elif isinstance(raw, int) and not isinstance(raw, bool):
            if raw < 0:
                raise ValueError("a size cannot be negative")
            value = raw
        else:
            raise ValueError('must be a size such as "512Mi" or "8Gi"')
        if lo is not None and value < lo:
            raise ValueError(f"must be at least {lo_text or lo}")
        if hi is not None and value > hi:
            raise ValueError(f"must be at most {hi_text or hi}")
        return value

    return convert


def as_str_list(raw: object) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise ValueError("must be a list of strings")
    return tuple(raw)


def as_enum(choices: Mapping[str, T]) -> Converter[T]:
    def convert(raw: object) -> T:
        if not isinstance(raw, str) or raw not in choices:
            raise ValueError("must be one of " + ", ".join(choices))
        return choices[raw]

    return convert


def _check_range(value: float, lo: float | None, hi: float | None) -> None:
    if lo is not None and hi is not None and not lo <= value <= hi:
        raise ValueError(f"must be between {_num(lo)} and {_num(hi)}")
    if lo is not None and value < lo:
        raise ValueError(f"must be >= {_num(lo)}")
    if hi is not None and value > hi:
        raise ValueError(f"must be <= {_num(hi)}")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _show_seconds(seconds: float) -> str:
    return format_duration(seconds)


def read_string_table(
    r: Reader | None, name: re.Pattern[str], name_rule: str, convert: Converter[T]
) -> dict[str, T]:
    """A table of string values (`[env]`, probe `headers`): every key must match `name`
    (else `name_rule` is the problem), every value passes `convert`. Sorted by key."""
    if r is None:
        return {}
    table: dict[str, T] = {}
    for key in list(r.data):
        value = r.optional(key, convert)
        if not name.fullmatch(key):
            r.problem(key, name_rule)
        elif value is not None:
            table[key] = value
    r.close()
    return dict(sorted(table.items()))
