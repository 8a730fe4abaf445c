"""Durations and sizes as the spec writes them: "1m30s", "500ms", "512Mi", "1.5Gi".

Parsing is exact: the digits are read as decimals, summed, and turned into a float (or an
int of bytes) once at the end, so "0.1s" is the float nearest 0.1 and never 0.1 plus drift.
The formatters are canonical: `format_duration(parse_duration(s))` gives one string for
every way of writing the same amount ("90s" and "1m30s" both give "1m30s"), and
`parse_x(format_x(v)) == v` for every value the parser can produce (the property tests
check both), which is what lets `config.canonical` write durations and sizes as text.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_DURATION_UNITS: dict[str, Decimal] = {
    "h": Decimal(3600),
    "m": Decimal(60),
    "s": Decimal(1),
    "ms": Decimal("0.001"),
    "us": Decimal("0.000001"),
    "µs": Decimal("0.000001"),
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|µs)")
_MICRO = Decimal("0.000001")

# Kubernetes' quantity suffixes: binary (Ki, Mi, ...) and decimal (k, M, ...); "K" is
# accepted for "k" because people write it.
_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
    "Pi": 1024**5,
    "Ei": 1024**6,
    "k": 1000,
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "P": 1000**5,
    "E": 1000**6,
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)([A-Za-z]*)")
_BINARY_DISPLAY = ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki")
_DECIMAL_DISPLAY = ("E", "P", "T", "G", "M", "k")


def parse_duration(text: str) -> float:
    """Seconds in `text`: one or more number+unit parts ("1h", "1m30s", "1.5s", "250us").

    Units: h, m, s, ms, us (or µs). A bare "0" is accepted; other bare numbers are not,
    because "10" could mean seconds or milliseconds. Negative durations do not exist here.
    """
    s = text.strip()
    if s == "0":
        return 0.0
    if not s:
        raise ValueError("empty duration")
    if re.fullmatch(r"\d+(\.\d+)?", s):
        raise ValueError(f'needs a unit: "{s}s", "{s}ms", "{s}m" ...')
    total = Decimal(0)
    pos = 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None:
            if s[pos] == "-":
                raise ValueError("a duration cannot be negative")
            raise ValueError('not a duration; write e.g. "500ms", "10s", "5m", "1h30m"')
        total += Decimal(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return float(total)


def format_duration(seconds: float) -> str:
    """The canonical text of a duration: "0s", "250us", "500ms", "1.5s", "1m30s", "2h".

    Resolution is one microsecond (the finest unit the parser reads).
    """
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    exact = Decimal(repr(float(seconds))).quantize(_MICRO)
    if exact == 0:
        return "0s"
    if exact < 1:
        ms = exact * 1000
        if ms == ms.to_integral_value():
            return f"{int(ms)}ms"
        return f"{int(exact / _MICRO)}us"
    hours, rest = divmod(exact, 3600)
    minutes, secs = divmod(rest, 60)
    out = ""
    if hours:
        out += f"{int(hours)}h"
    if minutes:
        out += f"{int(minutes)}m"
    if secs:
        out += f"{_plain(secs)}s"
    return out


def parse_size(text: str) -> int:
    """Bytes in `text`: a number with an optional suffix ("1024", "64Ki", "1.5Gi", "2G").

    Binary suffixes Ki Mi Gi Ti Pi Ei (powers of 1024), decimal k (or K) M G T P E (powers
    of 1000). The result must be a whole number of bytes ("1.5" is refused).
    """
    s = text.strip()
    m = _SIZE.fullmatch(s)
    if m is None:
        if s.startswith("-"):
            raise ValueError("a size cannot be negative")
        raise ValueError('not a size; write e.g. "512Mi", "8Gi", "2G" or a number of bytes')
    number, suffix = m.groups()
    unit = _SIZE_UNITS.get(suffix)
    if unit is None:
        raise ValueError(
            f'unknown size unit "{suffix}"; use Ki, Mi, Gi, Ti (1024s) or k, M, G, T (1000s)'
        )
    try:
        exact = Decimal(number) * unit
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimals
        raise ValueError("not a size") from exc
    if exact != exact.to_integral_value():
        raise ValueError("not a whole number of bytes")
    return int(exact)


def format_size(n: int) -> str:
    """The shortest exact text for `n` bytes, preferring binary units: "512Mi", "1.5Gi", "2G".

    Always exact (`parse_size(format_size(n)) == n`); falls back to plain bytes.
    """
    if n < 0:
        raise ValueError("a size cannot be negative")
    best = str(n)
    for suffixes in (_BINARY_DISPLAY, _DECIMAL_DISPLAY):
        for suffix in suffixes:
            unit = _SIZE_UNITS[suffix]
            if n < unit:
                continue
            value = Decimal(n) / unit
            # Up to two decimals ("1.5Gi", "1.25Mi"); more reads worse than a bigger unit.
            if value != value.quantize(Decimal("0.01")):
                continue
            candidate = f"{_plain(value)}{suffix}"
            if len(candidate) < len(best):
                best = candidate
    return best


def _plain(d: Decimal) -> str:
    """A Decimal without exponent or trailing zeros: 1.50 -> "1.5", 30 -> "30"."""
    return format(d.normalize(), "f")
