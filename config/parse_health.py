"""`[health.startup]`, `[health.readiness]`, `[health.liveness]`: the probes.

A probe is HTTP (`path`, a GET that must answer 2xx/3xx) or TCP (`tcp = true`, a connect
that must succeed): exactly one of the two. Its port defaults to the spec's app port. As in
Kubernetes, startup and liveness probes need `success_threshold = 1`: one success is all
either of them ever waits for.
"""

from __future__ import annotations

import re

from config.reader import Reader, as_bool, as_duration, as_int, as_str, read_string_table
from config.spec import Health, Probe

MAX_PROBE_DURATION = 3600.0
MAX_THRESHOLD = 1000
PROBE_KINDS = ("startup", "readiness", "liveness")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110)
MAX_STARTUP_BUDGET = 24 * 3600.0  # a model may load for hours, not days
_BAD_TEXT = re.compile(r"[\x00-\x1f\x7f]")


def read_health(r: Reader | None, *, app_port: int) -> Health:
    if r is None:
        return Health()
    startup, readiness, liveness = (
        _read_probe(r.table(kind), kind, app_port) for kind in PROBE_KINDS
    )
    r.close()
    return Health(startup=startup, readiness=readiness, liveness=liveness)


def _read_probe(p: Reader | None, kind: str, app_port: int) -> Probe | None:
    if p is None:
        return None
    path = p.optional("path", _as_path)
    tcp = p.get("tcp", as_bool, False)
    if tcp and p.has("path"):
        p.problem("path", "cannot be combined with tcp = true")
    elif not tcp and not p.has("path"):
        p.problem("path", 'required (an HTTP path such as "/health"), or set tcp = true')
    port = p.get("port", as_int(1, 65535), app_port)
    headers = _read_headers(p.table("headers"))
    if tcp and headers:
        p.problem("headers", "only for HTTP probes, not with tcp = true")
    initial_delay = p.get("initial_delay", as_duration(0, MAX_PROBE_DURATION), 0.0)
    period = p.get("period", as_duration(hi=MAX_PROBE_DURATION, above=0), 10.0)
    timeout = p.get("timeout", as_duration(hi=MAX_PROBE_DURATION, above=0), 1.0)
    failure_threshold = p.get("failure_threshold", as_int(1, MAX_THRESHOLD), 3)
    success_threshold = p.get("success_threshold", as_int(1, MAX_THRESHOLD), 1)
    if kind != "readiness" and success_threshold != 1:
        p.problem("success_threshold", f"must be 1 for a {kind} probe", success_threshold)
    timeout_total = p.optional("timeout_total", as_duration(hi=MAX_STARTUP_BUDGET, above=0))
    if timeout_total is not None and kind != "startup":
        p.problem("timeout_total", "only for the startup probe ([health.startup])")
        timeout_total = None
    p.close()
    return Probe(
        port=port,
        path=None if tcp else path,
        tcp=tcp,
        headers=headers,
        initial_delay=initial_delay,
        period=period,
        timeout=timeout,
        failure_threshold=failure_threshold,
        success_threshold=success_threshold,
        timeout_total=timeout_total,
    )


def _as_path(raw: object) -> str:
    path = as_str(raw)
    if not path.startswith("/"):
        raise ValueError('must start with "/"')
    if " " in path or _BAD_TEXT.search(path):
        raise ValueError("must not contain spaces or control characters")
    return path


def _as_header_value(raw: object) -> str:
    value = as_str(raw)
    if _BAD_TEXT.search(value.replace("\t", "")):
        raise ValueError("must not contain control characters (no CR or LF)")
    return value


def _read_headers(r: Reader | None) -> dict[str, str]:
    return read_string_table(r, _HEADER_NAME, "not a valid HTTP header name", _as_header_value)
