"""A protected endpoint's per-credential counters on /metrics (both formats, read back by
prometheus-client's parsers) and in the admin API's metrics answer (issue 13, point 1)."""

from __future__ import annotations

import dataclasses

from prometheus_client.parser import text_string_to_metric_families

from daemon.metrics.exposition import DeploymentMetrics, MetricsSnapshot, render
from tests.unit.test_prometheus import ECHO_STATS, openmetrics_families, samples, value

PROTECTED = dataclasses.replace(
    ECHO_STATS, by_credential=(("key:k1a2b3", 90), ("user:alice", 10)), unauthorized=5
)
SNAPSHOT = MetricsSnapshot(
    "0.1.0",
    (
        DeploymentMetrics("echo", 2, 2, endpoint=PROTECTED),
        DeploymentMetrics("open", 1, 1, endpoint=dataclasses.replace(ECHO_STATS, name="open")),
    ),
)


def test_per_credential_counters_in_the_text_format() -> None:
    t = samples(text_string_to_metric_families(render(SNAPSHOT)[0].decode()))
    name = "berth_endpoint_auth_requests_total"
    assert value(t, name, deployment="echo", credential="key:k1a2b3") == 90
    assert value(t, name, deployment="echo", credential="user:alice") == 10
    assert value(t, "berth_endpoint_unauthorized_requests_total", deployment="echo") == 5
    # An open endpoint has no such series.
    assert not any(("deployment", "open") in labels for (n, labels) in t if "auth" in n)
    assert (
        "berth_endpoint_unauthorized_requests_total",
        frozenset({("deployment", "open")}),
    ) not in t


def test_per_credential_counters_in_openmetrics() -> None:
    body, _ = render(SNAPSHOT, "application/openmetrics-text; version=1.0.0")
    t = samples(openmetrics_families(body.decode()))
    name = "berth_endpoint_auth_requests_total"
    assert value(t, name, deployment="echo", credential="key:k1a2b3") == 90
