"""berthd's /metrics: a snapshot's exposition parses with prometheus-client's own parsers
(text format and OpenMetrics), with the families and labels promised in
daemon/metrics/exposition.py, served over a real socket on 127.0.0.1."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator, Iterable

import httpx
import pytest
import trio
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as _openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from daemon.gpu.model import GpuSample
from daemon.http.listeners import parse_listen
from daemon.metrics.exposition import (
    DeploymentMetrics,
    MetricsSnapshot,
    ReplicaMetrics,
    metrics_server,
    render,
)
from proxy.stats import EndpointStatistics, LatencySummary, ReplicaStatistics, StatusCounts

ECHO_STATS = EndpointStatistics(
    name="echo",
    in_flight=1,
    requests_total=120,
    status=StatusCounts(s2xx=100, s4xx=5, s5xx=15),
    latency=LatencySummary(count=40, p50=0.012, p95=0.2, p99=0.4),
    window=60.0,
    replicas=(
        ReplicaStatistics(
            "echo-a", 1, 70, StatusCounts(s2xx=65, s5xx=5), LatencySummary(30, 0.01, 0.1, 0.3)
        ),
        ReplicaStatistics(
            "echo-b", 0, 40, StatusCounts(s2xx=35, s4xx=5), LatencySummary(0, None, None, None)
        ),
    ),
)

SNAPSHOT = MetricsSnapshot(
    version="0.1.0",
    deployments=(
        DeploymentMetrics(
            name="echo",
            desired=3,
            ready=2,
            replicas=(
                ReplicaMetrics("echo-a", "ready", restarts=0),
                ReplicaMetrics("echo-b", "ready", restarts=2),
                ReplicaMetrics("echo-c", "crashloop", restarts=5),
            ),
            endpoint=ECHO_STATS,
            scale_ups=4,
            scale_downs=1,
        ),
        DeploymentMetrics(name="idle", desired=0, ready=0),  # no endpoint serving
    ),
    gpus=(
        GpuSample(0, "nvidia.com/gpu=0", 37.0, 5 * 2**30, 80 * 2**30, 54.0, 180.5),
        GpuSample(
            1, "nvidia.com/gpu=1", None, None, 80 * 2**30, None, None
        ),  # figures NVML could not read
    ),
)


def openmetrics_families(text: str) -> Iterable[Metric]:
    """prometheus-client's OpenMetrics parser (untyped upstream)."""
    families: Iterable[Metric] = _openmetrics_families(text)  # type: ignore[no-untyped-call]
    return families


def samples(families: Iterable[Metric]) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in families
        for s in family.samples
    }


def value(
    table: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return table[(name, frozenset(labels.items()))]


def check_exposition(families: list[Metric]) -> None:
    types = {f.name: f.type for f in families}
    assert types["berth_endpoint_requests"] == "counter"
    assert types["berth_replica_requests"] == "counter"
    assert types["berth_replica_restarts"] == "counter"
    assert types["berth_scaling_decisions"] == "counter"
    assert types["berth_deployment_desired_replicas"] == "gauge"
    assert types["berth_gpu_power_watts"] == "gauge"
    # an info family in OpenMetrics, its `_info` gauge in the text format
    assert types.get("berth_build") == "info" or types.get("berth_build_info") == "gauge"
    t = samples(families)
    assert value(t, "berth_build_info", version="0.1.0") == 1
    assert value(t, "berth_deployment_desired_replicas", deployment="echo") == 3
    assert value(t, "berth_deployment_ready_replicas", deployment="echo") == 2
    assert value(t, "berth_deployment_desired_replicas", deployment="idle") == 0
    assert value(t, "berth_deployment_replicas", deployment="echo", state="ready") == 2
    assert value(t, "berth_deployment_replicas", deployment="echo", state="crashloop") == 1
    assert value(t, "berth_deployment_replicas", deployment="idle", state="draining") == 0
    assert (
        value(t, "berth_replica_state", deployment="echo", replica="echo-c", state="crashloop") == 1
    )
    assert value(t, "berth_replica_state", deployment="echo", replica="echo-c", state="ready") == 0
    assert value(t, "berth_replica_restarts_total", deployment="echo", replica="echo-b") == 2
    assert value(t, "berth_scaling_decisions_total", deployment="echo", direction="up") == 4
    assert value(t, "berth_scaling_decisions_total", deployment="echo", direction="down") == 1
    assert value(t, "berth_endpoint_requests_total", deployment="echo", status_class="2xx") == 100
    assert value(t, "berth_endpoint_requests_total", deployment="echo", status_class="5xx") == 15
    assert (
        value(
            t,
            "berth_replica_requests_total",
            deployment="echo",
            replica="echo-a",
            status_class="5xx",
        )
        == 5
    )
    assert value(t, "berth_endpoint_in_flight_requests", deployment="echo") == 1
    assert value(t, "berth_endpoint_window_requests", deployment="echo") == 40
    assert value(t, "berth_latency_window_seconds", deployment="echo") == 60
    assert (
        value(t, "berth_endpoint_request_duration_seconds", deployment="echo", quantile="0.95")
        == 0.2
    )
    assert (
        value(
            t,
            "berth_replica_request_duration_seconds",
            deployment="echo",
            replica="echo-a",
            quantile="0.99",
        )
        == 0.3
    )
    # nothing measured is left out, never written as 0
    assert not any(
        name == "berth_replica_request_duration_seconds" and ("replica", "echo-b") in labels
        for name, labels in t
    )
    assert not any(
        labels and ("deployment", "idle") in labels and "requests" in name for name, labels in t
    )
    assert value(t, "berth_gpus") == 2
    assert value(t, "berth_gpu_utilization_ratio", gpu="0") == 0.37
    assert value(t, "berth_gpu_memory_used_bytes", gpu="0") == 5 * 2**30
    assert value(t, "berth_gpu_memory_total_bytes", gpu="1") == 80 * 2**30
    assert value(t, "berth_gpu_temperature_celsius", gpu="0") == 54
    assert value(t, "berth_gpu_power_watts", gpu="0") == 180.5
    assert ("berth_gpu_power_watts", frozenset({("gpu", "1")})) not in t


def test_text_format_parses() -> None:
    body, content_type = render(SNAPSHOT)
    assert content_type.startswith("text/plain; version=0.0.4")
    check_exposition(list(text_string_to_metric_families(body.decode())))


def test_openmetrics_parses() -> None:
    body, content_type = render(SNAPSHOT, "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    check_exposition(list(openmetrics_families(body.decode())))


def test_empty_snapshot_parses() -> None:
    body, _ = render(MetricsSnapshot(version="0.1.0"))
    t = samples(text_string_to_metric_families(body.decode()))
    assert value(t, "berth_gpus") == 0


def test_an_unknown_state_is_exported_not_dropped() -> None:
    snap = MetricsSnapshot(
        "0.1.0", (DeploymentMetrics("x", 1, 0, (ReplicaMetrics("x-a", "pulling", 0),)),)
    )
    t = samples(text_string_to_metric_families(render(snap)[0].decode()))
    assert value(t, "berth_deployment_replicas", deployment="x", state="pulling") == 1


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("[::1]:9464", ("::1", 9464)),
        (":9464", (None, 9464)),
    ],
)
def test_parse_listen(listen: str, expected: tuple[str | None, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.fixture
async def server(nursery: trio.Nursery) -> AsyncIterator[tuple[str, list[int]]]:
    scrapes: list[int] = []

    async def source() -> MetricsSnapshot:
        scrapes.append(1)
        return SNAPSHOT

    host, port = await nursery.start(metrics_server("127.0.0.1:0", source).run)
    assert host == "127.0.0.1"
    yield f"http://127.0.0.1:{port}", scrapes


async def test_metrics_over_a_socket(server: tuple[str, list[int]]) -> None:
    base, scrapes = server
    async with httpx.AsyncClient(base_url=base) as client:
        for _ in range(2):  # the second scrape reuses the keep-alive connection
            response = await client.get("/metrics")
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
            check_exposition(list(text_string_to_metric_families(response.text)))
        assert len(scrapes) == 2
        om = await client.get(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
        check_exposition(list(openmetrics_families(om.text)))
        head = await client.head("/metrics")
        assert head.status_code == 200 and head.content == b""
        # ... with the GET's headers: the same length (httpx asks for gzip either way).
        assert head.headers["content-length"] == response.headers["content-length"]
        missing = await client.get("/")
        assert missing.status_code == 404 and missing.text == "not found: try /metrics\n"
        post = await client.post("/metrics", content=b"x")
        assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"


async def test_gzip_when_accepted(server: tuple[str, list[int]]) -> None:
    base, _ = server
    stream = await trio.open_tcp_stream("127.0.0.1", int(base.rsplit(":", 1)[1]))
    async with stream:
        await stream.send_all(
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n"
            b"Connection: close\r\n\r\n"
        )
        raw = b""
        while chunk := await stream.receive_some(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"content-encoding: gzip" in head.lower()
    check_exposition(list(text_string_to_metric_families(gzip.decompress(body).decode())))


async def test_bad_request_gets_400(server: tuple[str, list[int]]) -> None:
    base, scrapes = server
    stream = await trio.open_tcp_stream("127.0.0.1", int(base.rsplit(":", 1)[1]))
    async with stream:
        await stream.send_all(b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n")
        raw = b""
        while chunk := await stream.receive_some(65536):
            raw += chunk
    assert raw.startswith(b"HTTP/1.1 400 ")
    assert scrapes == []


async def test_port_in_use_fails_start(nursery: trio.Nursery) -> None:
    async def source() -> MetricsSnapshot:
        return SNAPSHOT

    _, port = await nursery.start(metrics_server("127.0.0.1:0", source).run)
    with pytest.raises(OSError):
        await nursery.start(metrics_server(f"127.0.0.1:{port}", source).run)


async def test_idle_connection_is_closed(nursery: trio.Nursery) -> None:
    async def source() -> MetricsSnapshot:
        return SNAPSHOT

    _, port = await nursery.start(metrics_server("127.0.0.1:0", source, idle_timeout=0.05).run)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        with trio.fail_after(5):
            assert await stream.receive_some(1024) == b""


def test_latency_histograms_per_deployment_and_replica_parse() -> None:
    from dataclasses import replace

    from proxy.stats import LatencyWindow

    window = LatencyWindow()
    for latency in (0.003, 0.02, 0.02, 0.7):
        window.record(1.0, latency)
    hist = window.histogram()
    stats = replace(
        ECHO_STATS,
        histogram=hist,
        replicas=(replace(ECHO_STATS.replicas[0], histogram=hist),),
    )
    snapshot = MetricsSnapshot("0.1.0", (DeploymentMetrics("echo", 2, 2, endpoint=stats),))
    body, _ = render(snapshot)
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    for name, labels in (
        ("berth_endpoint_latency_seconds", {"deployment": "echo"}),
        ("berth_replica_latency_seconds", {"deployment": "echo", "replica": "echo-a"}),
    ):
        family = families[name]
        assert family.type == "histogram"
        samples = {
            (s.name, s.labels.get("le")): s.value
            for s in family.samples
            if all(s.labels.get(k) == v for k, v in labels.items())
        }
        assert samples[(f"{name}_bucket", "0.005")] == 1
        assert samples[(f"{name}_bucket", "0.025")] == 3
        assert samples[(f"{name}_bucket", "1.0")] == 4
        assert samples[(f"{name}_bucket", "+Inf")] == 4
        assert samples[(f"{name}_count", None)] == 4
        assert samples[(f"{name}_sum", None)] == pytest.approx(0.743)
