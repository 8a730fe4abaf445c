"""Reads `wrk --latency` output on stdin; prints `req_per_s p50_us p99_us` on one line."""

from __future__ import annotations

import re
import sys

_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6}


def _micros(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if m is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse(out: str) -> tuple[float, float, float]:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _micros(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _micros(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    if errors:
        print(f"warning: {errors.group(0)}", file=sys.stderr)
    return rps, p50, p99


if __name__ == "__main__":
    rps, p50, p99 = parse(sys.stdin.read())
    print(f"{rps:.0f} {p50:.0f} {p99:.0f}")
