"""`[endpoint]`'s traffic keys and `[endpoint.outlier]`: defaults, values, every problem."""

from __future__ import annotations

import pytest

from config.errors import SpecError
from config.parse import parse_spec, spec_from_dict, spec_to_dict
from config.spec import (
    MAX_QUEUE_DEFAULT,
    QUEUE_TIMEOUT_DEFAULT,
    Balance,
    Outlier,
    RetryPolicy,
    UpstreamProtocol,
)

BASE = 'name = "demo"\nimage = "localhost/demo:1"\nport = 8080\n[endpoint]\nport = 18080\n'


def test_defaults() -> None:
    e = parse_spec(BASE).endpoint
    assert e is not None
    assert e.max_concurrency is None
    assert (e.max_queue, e.queue_timeout) == (MAX_QUEUE_DEFAULT, QUEUE_TIMEOUT_DEFAULT)
    assert e.balance is Balance.ROUND_ROBIN  # the product's promise
    assert e.retry is RetryPolicy.IDEMPOTENT
    assert e.upstream_protocol is UpstreamProtocol.HTTP1
    assert e.outlier == Outlier()
    short = spec_to_dict(parse_spec(BASE), defaults=False)["endpoint"]
    assert short == {"port": 18080}  # defaults are not written


def test_values_and_round_trip() -> None:
    text = BASE + (
        'max_concurrency = 2\nmax_queue = 10\nqueue_timeout = "5s"\nbalance = "least_request"\n'
        'retry = "all"\nupstream_protocol = "h2c"\n[endpoint.outlier]\nconsecutive_5xx = 3\n'
        'failures = 0\nwindow = "10s"\nejection_time = "2s"\nmax_ejection_time = "1m"\n'
        "max_ejected_percent = 34\n"
    )
    spec = parse_spec(text)
    e = spec.endpoint
    assert e is not None
    assert (e.max_concurrency, e.max_queue, e.queue_timeout) == (2, 10, 5.0)
    assert e.balance is Balance.LEAST_REQUEST
    assert e.retry is RetryPolicy.ALL
    assert e.upstream_protocol is UpstreamProtocol.H2C
    assert e.outlier == Outlier(3, 0, 10.0, 2.0, 60.0, 34.0)
    for full in (True, False):
        assert spec_from_dict(spec_to_dict(spec, defaults=full)) == spec


def test_every_problem_named() -> None:
    text = BASE + (
        'max_concurrency = 0\nmax_queue = -1\nqueue_timeout = 5\nbalance = "fastest"\n'
        'retry = "never"\nupstream_protocol = "h3"\n[endpoint.outlier]\n'
        'ejection_time = "10s"\nmax_ejection_time = "5s"\nmax_ejected_percent = 101\n'
        "bogus = 1\n"
    )
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    got = info.value.messages()
    expected = [
        "endpoint.max_concurrency: must be between 1 and 100000",
        "endpoint.max_queue: must be between 0 and 100000",
        "endpoint.queue_timeout: must be a duration string",
        "endpoint.balance: must be one of round_robin, least_request",
        "endpoint.retry: must be one of idempotent, all",
        "endpoint.upstream_protocol: must be one of http1, h2c",
        "endpoint.outlier.max_ejected_percent: must be between 0 and 100",
        "endpoint.outlier.max_ejection_time: must be at least endpoint.outlier.ejection_time",
        "endpoint.outlier.bogus: unknown key",
    ]
    for want in expected:
        assert any(m.startswith(want) for m in got), (want, got)
    assert len(got) == len(expected)
