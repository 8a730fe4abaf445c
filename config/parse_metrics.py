"""`[[metrics.scrape]]` (where berthd reads a replica's own Prometheus metrics) and the
series selector an `[[autoscale.metrics]] metric = "prometheus"` entry names in `query`.

The selector is a documented subset of PromQL's, not PromQL: a metric name, optionally
followed by exact label matchers, `name{label="value", other="value"}`. Regex and negative
matchers (`=~`, `!=`, `!~`), functions and operators are refused with a message saying so.
"""

from __future__ import annotations

import re

from config.reader import Reader, as_duration, as_int
from config.spec import SCRAPE_PATH, SCRAPE_PERIOD, SCRAPE_TIMEOUT, Metrics, Scrape, SeriesSelector
from config.units import format_duration

MAX_SCRAPES = 8
MIN_PERIOD = 1.0
MAX_PERIOD = 3600.0
MAX_TIMEOUT = 60.0
MAX_PATH = 1024
MAX_QUERY = 1024

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
# One matcher: a label name, an operator, a double-quoted value (with \\ \" \n escapes).
_MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*')
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}
_SELECTOR_RULE = (
    "must be a metric name, optionally with exact label matchers, such as "
    'vllm:num_requests_waiting or vllm:num_requests_waiting{model_name="x"}'
)


def read_metrics(r: Reader | None, app_port: int) -> Metrics:
    if r is None:
        return Metrics()
    entries = r.tables("scrape")
    r.close()
    if len(entries) > MAX_SCRAPES:
        r.problem("scrape", f"at most {MAX_SCRAPES} entries ({len(entries)} given)")
    scrapes: list[Scrape] = []
    seen: dict[tuple[int, str], str] = {}
    for s in entries:
        scrape = _read_scrape(s, app_port)
        if scrape is None:
            continue
        key = (scrape.port, scrape.path)
        if key in seen:
            s.problem("path", f"same port and path as {seen[key]}", scrape.path)
            continue
        seen[key] = s.path
        scrapes.append(scrape)
    return Metrics(scrape=tuple(scrapes))


def _read_scrape(s: Reader, app_port: int) -> Scrape | None:
    port = s.get("port", as_int(1, 65535), app_port)
    path = s.get("path", _as_path, SCRAPE_PATH)
    period = s.get("period", as_duration(MIN_PERIOD, MAX_PERIOD), SCRAPE_PERIOD)
    timeout = s.optional("timeout", as_duration(hi=MAX_TIMEOUT, above=0))
    s.close()
    if timeout is None:
        timeout = min(SCRAPE_TIMEOUT, period)
    elif s.ok("period") and timeout > period:
        s.problem(
            "timeout",
            f"must be at most {s.path}.period ({format_duration(timeout)} > "
            f"{format_duration(period)}): a scrape ends before the next one is due",
        )
    if not s.ok("port", "path", "period", "timeout"):
        return None
    return Scrape(port=port, path=path, period=period, timeout=timeout)


def _as_path(raw: object) -> str:
    if not isinstance(raw, str):
        raise ValueError('must be a string such as "/metrics"')
    if not raw.startswith("/"):
        raise ValueError('must start with "/"')
    if len(raw) > MAX_PATH:
        raise ValueError(f"must be at most {MAX_PATH} characters")
    if not raw.isascii() or any(c.isspace() or not c.isprintable() for c in raw) or "#" in raw:
        raise ValueError("must be printable ASCII without spaces or a #fragment")
    return raw


def as_selector(raw: object) -> SeriesSelector:
    """`name` or `name{label="value", ...}` (exact matchers only) as a `SeriesSelector`."""
    if not isinstance(raw, str):
        raise ValueError(_SELECTOR_RULE)
    text = raw.strip()
    if len(text) > MAX_QUERY:
        raise ValueError(f"must be at most {MAX_QUERY} characters")
    brace = text.find("{")
    name = (text if brace < 0 else text[:brace]).rstrip()
    if not _METRIC_NAME.fullmatch(name):
        raise ValueError(_SELECTOR_RULE)
    if brace < 0:
        return SeriesSelector(name)
    if not text.endswith("}"):
        raise ValueError(f"{_SELECTOR_RULE}: the label matchers must end with }}")
    return SeriesSelector(name, _matchers(text[brace + 1 : -1]))


def _matchers(body: str) -> tuple[tuple[str, str], ...]:
    labels: dict[str, str] = {}
    pos = 0
    while body[pos:].strip():
        m = _MATCHER.match(body, pos)
        if m is None:
            raise ValueError(f'{_SELECTOR_RULE}: cannot read the matcher at "{body[pos:].strip()}"')
        label, op, value = m.group(1), m.group(2), _unescape(m.group(3))
        if op != "=":
            raise ValueError(f'only exact matchers (label="value") are supported, not {op}')
        if label.startswith("__"):
            raise ValueError(f"label {label} is reserved (names starting with __)")
        if label in labels:
            raise ValueError(f"label {label} is matched twice")
        labels[label] = value
        pos = m.end()
        if pos < len(body):
            if body[pos] != ",":
                raise ValueError(f"{_SELECTOR_RULE}: matchers are separated by commas")
            pos += 1
    return tuple(sorted(labels.items()))


def _unescape(text: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            nxt = text[i + 1]  # the matcher's pattern never ends on a lone backslash
            if nxt not in _ESCAPES:
                raise ValueError(f"unknown escape \\{nxt} in a label value")
            out.append(_ESCAPES[nxt])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)
