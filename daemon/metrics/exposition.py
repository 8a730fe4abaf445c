"""berthd's `/metrics`: Prometheus exposition of a `MetricsSnapshot`, served on trio.

The daemon hands `MetricsServer` an async function returning a `MetricsSnapshot`; every
scrape calls it once, on the trio thread, and renders the (immutable) result with
prometheus-client's own encoders (text format 0.0.4, or OpenMetrics when the scraper asks
for it; gzip when accepted). Served here rather than by prometheus-client's threaded
`start_http_server` because the figures (the proxy's counters, the workers' replica
memory) are plain objects that the trio loop mutates without locks: reading them from
another thread could see them half-updated. On trio, a scrape sees one consistent moment,
the listener lives in berthd's nursery (bind errors surface through `nursery.start`,
shutdown cancels it), and nothing outlives berthd. Rendering a snapshot takes well under
a millisecond for a workstation's worth of replicas, so it stays on the loop.

What is exported, and why in that form:
- Requests: counters by status class, per deployment (the endpoint, proxy-made answers
  such as 503 included) and per replica. Separate metric names, so that summing one
  never double counts the other.
- Latency: the proxy keeps per-second histograms over a sliding window (proxy/stats.py),
  not cumulative buckets or a sum, so neither a Prometheus histogram nor a summary can be
  built honestly. Exported as gauges `..._request_duration_seconds{quantile="0.5|0.95|0.99"}`
  over the window, plus the window's request count and length. Quantiles the window cannot
  give (no requests) are left out, not written as 0.
- Replica states: `berth_replica_state{state}` is 1 for the replica's state and 0 for the
  others (kube-state-metrics' style, so `== 1` alerts work), and per deployment
  `berth_deployment_replicas{state}` counts them; every known state is always present.
- Restarts and scaling decisions: counters (`..._total`). Desired and ready replicas: gauges.
- GPUs: utilization (a 0-1 ratio, Prometheus' base unit), memory used and total (bytes),
  temperature (Celsius) and power (watts) per GPU index; an unreadable figure is omitted.
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import h11
import trio
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from daemon.gpu.model import GpuSample
from proxy.stats import EndpointStatistics, LatencySummary, StatusCounts

log = logging.getLogger("berthd")

REPLICA_STATES = ("starting", "ready", "unhealthy", "draining", "stopped", "crashloop")
REQUEST_TIMEOUT = 10.0  # to read a request and write its answer
IDLE_TIMEOUT = 60.0  # a keep-alive connection waiting for its next scrape
MAX_HEAD = 16 * 1024


@dataclass(frozen=True)
class ReplicaMetrics:
    replica_id: str
    state: str  # one of REPLICA_STATES (another value is exported as is)
    restarts: int


@dataclass(frozen=True)
class DeploymentMetrics:
    name: str
    desired: int
    ready: int
    replicas: tuple[ReplicaMetrics, ...] = ()
    # The proxy's figures (`Endpoint.statistics()`); None while no endpoint serves.
    endpoint: EndpointStatistics | None = None
    scale_ups: int = 0  # autoscaler decisions since berthd started
    scale_downs: int = 0


@dataclass(frozen=True)
class MetricsSnapshot:
    version: str
    deployments: tuple[DeploymentMetrics, ...] = ()
    gpus: tuple[GpuSample, ...] = ()


MetricsSource = Callable[[], Awaitable[MetricsSnapshot]]


class SnapshotCollector:
    """A prometheus-client Collector over one snapshot (`generate_latest(collector)`)."""

    def __init__(self, snapshot: MetricsSnapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        info = InfoMetricFamily("berth_build", "berthd's version")
        info.add_metric([], {"version": snap.version})
        yield info
        yield from _deployment_families(snap.deployments)
        yield from _request_families(snap.deployments)
        yield from _gpu_families(snap.gpus)


def render(snapshot: MetricsSnapshot, accept: str = "") -> tuple[bytes, str]:
    """The exposition of `snapshot` in the format `accept` asks for, and its content type."""
    encoder, content_type = choose_encoder(accept)
    return encoder(SnapshotCollector(snapshot)), content_type


def _deployment_families(deployments: tuple[DeploymentMetrics, ...]) -> Iterator[Metric]:
    desired = GaugeMetricFamily(
        "berth_deployment_desired_replicas",
        "Replicas the deployment should run",
        labels=["deployment"],
    )
    ready = GaugeMetricFamily(
        "berth_deployment_ready_replicas", "Replicas ready and in rotation", labels=["deployment"]
    )
    by_state = GaugeMetricFamily(
        "berth_deployment_replicas", "Replicas by state", labels=["deployment", "state"]
    )
    state = GaugeMetricFamily(
        "berth_replica_state",
        "1 for the replica's current state, 0 for the others",
        labels=["deployment", "replica", "state"],
    )
    restarts = CounterMetricFamily(
        "berth_replica_restarts",
        "Times berthd restarted the replica",
        labels=["deployment", "replica"],
    )
    scaling = CounterMetricFamily(
        "berth_scaling_decisions",
        "Autoscaler decisions that changed the replica count",
        labels=["deployment", "direction"],
    )
    for d in deployments:
        desired.add_metric([d.name], d.desired)
        ready.add_metric([d.name], d.ready)
        states = list(REPLICA_STATES)
        states += sorted({r.state for r in d.replicas} - set(states))
        for s in states:
            by_state.add_metric([d.name, s], sum(1 for r in d.replicas if r.state == s))
        for r in d.replicas:
            for s in states:
                state.add_metric([d.name, r.replica_id, s], 1 if r.state == s else 0)
            restarts.add_metric([d.name, r.replica_id], r.restarts)
        scaling.add_metric([d.name, "up"], d.scale_ups)
        scaling.add_metric([d.name, "down"], d.scale_downs)
    yield from (desired, ready, by_state, state, restarts, scaling)


def _request_families(deployments: tuple[DeploymentMetrics, ...]) -> Iterator[Metric]:
    for scope, labels in (("endpoint", ["deployment"]), ("replica", ["deployment", "replica"])):
        what = "the deployment's endpoint" if scope == "endpoint" else "the replica"
        requests = CounterMetricFamily(
            f"berth_{scope}_requests",
            f"Responses from {what}, by status class",
            labels=[*labels, "status_class"],
        )
        in_flight = GaugeMetricFamily(
            f"berth_{scope}_in_flight_requests", f"Requests {what} is serving now", labels=labels
        )
        duration = GaugeMetricFamily(
            f"berth_{scope}_request_duration_seconds",
            f"Request duration quantiles at {what}, over the proxy's latency window",
            labels=[*labels, "quantile"],
        )
        in_window = GaugeMetricFamily(
            f"berth_{scope}_window_requests",
            f"Requests at {what} within the latency window",
            labels=labels,
        )
        histogram = HistogramMetricFamily(
            f"berth_{scope}_latency_seconds",
            f"Request duration at {what}, head in to response end, since berthd started",
            labels=labels,
        )
        for d in deployments:
            stats = d.endpoint
            if stats is None:
                continue
            if scope == "endpoint":
                rows = [([d.name], stats.status, stats.in_flight, stats.latency, stats.histogram)]
            else:
                rows = [
                    ([d.name, r.replica_id], r.status, r.in_flight, r.latency, r.histogram)
                    for r in stats.replicas
                ]
            for values, status, flight, latency, hist in rows:
                for cls, count in _status_classes(status):
                    requests.add_metric([*values, cls], count)
                in_flight.add_metric(values, flight)
                in_window.add_metric(values, latency.count)
                for q, v in _quantiles(latency):
                    duration.add_metric([*values, q], v)
                if hist is not None:
                    buckets = [(_le(bound), float(n)) for bound, n in hist.buckets]
                    buckets.append(("+Inf", float(hist.count)))
                    histogram.add_metric(values, buckets, sum_value=hist.sum)
        yield from (requests, in_flight, duration, in_window, histogram)
    window = GaugeMetricFamily(
        "berth_latency_window_seconds",
        "Length of the proxy's latency window behind the duration quantiles",
        labels=["deployment"],
    )
    for d in deployments:
        if d.endpoint is not None:
            window.add_metric([d.name], d.endpoint.window)
    yield window


def _le(bound: float) -> str:
    """A bucket bound as Prometheus' own histograms write it ("1.0", "0.005")."""
    text: str = floatToGoString(bound)  # type: ignore[no-untyped-call]
    return text


def _status_classes(s: StatusCounts) -> list[tuple[str, int]]:
    return [("2xx", s.s2xx), ("3xx", s.s3xx), ("4xx", s.s4xx), ("5xx", s.s5xx), ("other", s.other)]


def _quantiles(latency: LatencySummary) -> list[tuple[str, float]]:
    pairs = (("0.5", latency.p50), ("0.95", latency.p95), ("0.99", latency.p99))
    return [(q, v) for q, v in pairs if v is not None]


def _gpu_families(gpus: tuple[GpuSample, ...]) -> Iterator[Metric]:
    count = GaugeMetricFamily("berth_gpus", "NVIDIA GPUs berthd found")
    count.add_metric([], len(gpus))
    yield count
    specs: list[tuple[str, str, Callable[[GpuSample], float | None]]] = [
        (
            "berth_gpu_utilization_ratio",
            "GPU busy time over NVML's last sample period (0-1)",
            lambda g: None if g.utilization_percent is None else g.utilization_percent / 100,
        ),
        ("berth_gpu_memory_used_bytes", "GPU memory in use", lambda g: g.memory_used_bytes),
        ("berth_gpu_memory_total_bytes", "GPU memory installed", lambda g: g.memory_total_bytes),
        ("berth_gpu_temperature_celsius", "GPU core temperature", lambda g: g.temperature_c),
        ("berth_gpu_power_watts", "GPU power draw", lambda g: g.power_w),
    ]
    for name, doc, read in specs:
        family = GaugeMetricFamily(name, doc, labels=["gpu"])
        for g in gpus:
            value = read(g)
            if value is not None:
                family.add_metric([str(g.index)], value)
        yield family


def parse_listen(listen: str) -> tuple[str | None, int]:
    """("127.0.0.1", 9464) from "127.0.0.1:9464"; "[::1]:9464" -> "::1"; ":9464" -> None
    (every address). The setting was validated by config/settings.py."""
    host, _, port = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return (host or None), int(port)


class MetricsServer:
    """`/metrics` over HTTP/1.1 (h11) on `listen`; start with `nursery.start(server.run)`,
    which returns the bound (host, port) once it listens and raises OSError if it cannot."""

    def __init__(self, listen: str, source: MetricsSource) -> None:
        self.listen = listen
        self._source = source

    def __repr__(self) -> str:
        return f"<MetricsServer {self.listen}>"

    async def run(
        self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        host, port = parse_listen(self.listen)
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()
        log.info("metrics at http://%s/metrics", self.listen)
        task_status.started((bound[0], bound[1]))
        await trio.serve_listeners(self._serve_connection, listeners)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        async with stream:
            try:
                while True:
                    event: h11.Event | None = None
                    with trio.move_on_after(IDLE_TIMEOUT):
                        event = await _next_event(conn, stream)
                    if not isinstance(event, h11.Request):
                        return  # idle too long, or the scraper closed the connection
                    with trio.move_on_after(REQUEST_TIMEOUT):
                        await self._answer(conn, stream, event)
                    if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                        return
                    conn.start_next_cycle()
            except h11.RemoteProtocolError as exc:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    with trio.move_on_after(REQUEST_TIMEOUT):
                        await _respond(conn, stream, exc.error_status_hint, b"bad request\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the scraper went away mid-answer

    async def _answer(
        self, conn: h11.Connection, stream: trio.SocketStream, request: h11.Request
    ) -> None:
        while not isinstance(
            await _next_event(conn, stream), h11.EndOfMessage | h11.ConnectionClosed
        ):
            pass  # a body on a GET is read and ignored
        path = request.target.split(b"?", 1)[0]
        headers = {k.decode().lower(): v.decode("latin-1") for k, v in request.headers}
        if path != b"/metrics":
            await _respond(conn, stream, 404, b"not found: try /metrics\n")
            return
        if request.method not in (b"GET", b"HEAD"):
            await _respond(conn, stream, 405, b"GET or HEAD\n", [("Allow", "GET, HEAD")])
            return
        body, content_type = render(await self._source(), headers.get("accept", ""))
        extra = [("Content-Type", content_type)]
        if gzip_accepted(headers.get("accept-encoding", "")):
            body = gzip.compress(body)
            extra.append(("Content-Encoding", "gzip"))
        await _respond(conn, stream, 200, body, extra, head=request.method == b"HEAD")


async def _next_event(conn: h11.Connection, stream: trio.SocketStream) -> h11.Event:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
            continue
        if event is h11.PAUSED:  # only after a request, before start_next_cycle
            return h11.ConnectionClosed()
        assert isinstance(event, h11.Event)
        return event


async def _respond(
    conn: h11.Connection,
    stream: trio.SocketStream,
    status: int,
    body: bytes,
    headers: list[tuple[str, str]] | None = None,
    *,
    head: bool = False,
) -> None:
    fields = headers or [("Content-Type", "text/plain; charset=utf-8")]
    fields = [*fields, ("Content-Length", str(len(body)))]
    for event in (
        h11.Response(status_code=status, headers=fields),
        h11.Data(data=b"" if head else body),
        h11.EndOfMessage(),
    ):
        data = conn.send(event)
        if data:
            await stream.send_all(data)
