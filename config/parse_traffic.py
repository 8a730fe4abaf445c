"""`[endpoint]`'s traffic rules: admission, balancing, retries, the upstream protocol, and
`[endpoint.outlier]` (passive health).

Admission: `max_concurrency` requests in flight per replica (absent: no cap), `max_queue`
requests waiting per endpoint (for a slot, or for a replica that is starting; 0: none
wait), `queue_timeout` the longest wait for a busy replica's slot (`cold_start_timeout`
bounds the wait for a starting one). The defaults are `config.spec.Endpoint`'s.
"""

from __future__ import annotations

from typing import Any, Final

from config.reader import Reader, as_duration, as_enum, as_int, as_number
from config.spec import Balance, Endpoint, Outlier, RetryPolicy, UpstreamProtocol

MAX_CONCURRENCY_LIMIT = 100_000
MAX_QUEUE_LIMIT = 100_000
MAX_QUEUE_TIMEOUT = 86400.0  # a day, as every other endpoint timeout
_DEFAULTS: Final = Endpoint(port=0)  # the spec's defaults live in config.spec, once


def read_traffic(r: Reader) -> dict[str, Any]:
    """The traffic keys of `[endpoint]` and its `[endpoint.outlier]` table, as the
    `Endpoint` keyword arguments they are (defaults: `Endpoint`'s own)."""
    base = _DEFAULTS
    return dict(
        max_concurrency=r.optional("max_concurrency", as_int(1, MAX_CONCURRENCY_LIMIT)),
        max_queue=r.get("max_queue", as_int(0, MAX_QUEUE_LIMIT), base.max_queue),
        queue_timeout=r.get(
            "queue_timeout", as_duration(lo=0.0, hi=MAX_QUEUE_TIMEOUT), base.queue_timeout
        ),
        balance=r.get("balance", as_enum({b.value: b for b in Balance}), base.balance),
        retry=r.get("retry", as_enum({p.value: p for p in RetryPolicy}), base.retry),
        upstream_protocol=r.get(
            "upstream_protocol",
            as_enum({p.value: p for p in UpstreamProtocol}),
            base.upstream_protocol,
        ),
        outlier=_read_outlier(r.table("outlier")),
    )


def _read_outlier(r: Reader | None) -> Outlier:
    base = Outlier()
    if r is None:
        return base
    consecutive = r.get("consecutive_5xx", as_int(0, 1000), base.consecutive_5xx)
    failures = r.get("failures", as_int(0, 1000), base.failures)
    window = r.get("window", as_duration(lo=1.0, hi=3600.0), base.window)
    ejection = r.get("ejection_time", as_duration(lo=1.0, hi=3600.0), base.ejection_time)
    longest = r.get("max_ejection_time", as_duration(lo=1.0, hi=86400.0), base.max_ejection_time)
    percent = r.get("max_ejected_percent", as_number(0.0, 100.0), base.max_ejected_percent)
    if r.ok("ejection_time", "max_ejection_time") and longest < ejection:
        r.problem(
            "max_ejection_time",
            "must be at least endpoint.outlier.ejection_time (the first ejection's length)",
        )
    r.close()
    return Outlier(
        consecutive_5xx=consecutive,
        failures=failures,
        window=window,
        ejection_time=ejection,
        max_ejection_time=longest,
        max_ejected_percent=percent,
    )
