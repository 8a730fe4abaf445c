"""An endpoint's queue and ejected replicas on /metrics (both formats, read back by
prometheus-client's parsers) and in `berth metrics` (issue 14, point 1)."""

from __future__ import annotations

import dataclasses

import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon.cli.metrics import _print_traffic
from daemon.metrics.exposition import DeploymentMetrics, MetricsSnapshot, render
from proxy.stats import LatencySummary
from tests.unit.test_prometheus import ECHO_STATS, openmetrics_families, samples, value

BUSY = dataclasses.replace(
    ECHO_STATS,
    queued=7,
    queued_total=120,
    queue_time=LatencySummary(100, 0.25, 0.5, 1.9, 0.4),
    ejected=("r1",),
    grpc_status=(("OK", 40), ("NOT_FOUND", 2)),
)
SNAPSHOT = MetricsSnapshot("0.1.0", (DeploymentMetrics("echo", 2, 2, endpoint=BUSY),))


def test_queue_and_ejections_in_both_formats() -> None:
    text = samples(text_string_to_metric_families(render(SNAPSHOT)[0].decode()))
    body, _ = render(SNAPSHOT, "application/openmetrics-text; version=1.0.0")
    for t in (text, samples(openmetrics_families(body.decode()))):
        assert value(t, "berth_endpoint_queued_requests", deployment="echo") == 7
        assert value(t, "berth_endpoint_queued_total", deployment="echo") == 120
        seconds = "berth_endpoint_queue_time_seconds"
        assert value(t, seconds, deployment="echo", quantile="0.5") == 0.25
        assert value(t, seconds, deployment="echo", quantile="0.99") == 1.9
        assert value(t, "berth_endpoint_ejected_replicas", deployment="echo") == 1
        calls = "berth_endpoint_grpc_calls_total"
        assert value(t, calls, deployment="echo", grpc_status="OK") == 40
        assert value(t, calls, deployment="echo", grpc_status="NOT_FOUND") == 2


def test_berth_metrics_prints_the_queue(capsys: pytest.CaptureFixture[str]) -> None:
    _print_traffic(
        {
            "queued": 7,
            "queued_total": 120,
            "queue_time": {"count": 100, "p50": 0.25, "p99": 1.9, "mean": 0.4},
            "ejected": ["r1"],
            "grpc_status": {"OK": 40, "NOT_FOUND": 2},
        }
    )
    out = capsys.readouterr().out
    assert out == (
        "queue: 7 waiting now, 120 ever; waited p50 250ms, p99 1.9s; ejected: r1\n"
        "grpc: OK 40, NOT_FOUND 2\n"
    )
