"""berthd's `/metrics`: Prometheus exposition of a `MetricsSnapshot`, served on trio.

`metrics_page(source)` is the page: a `daemon.http.server` handler that calls `source` (an
async function returning a `MetricsSnapshot`) once per scrape, on the trio thread, and
renders the (immutable) result with prometheus-client's own encoders (text format 0.0.4, or
OpenMetrics when the scraper's Accept asks for it; gzip when accepted; HEAD; 404 off
/metrics, 405 with Allow for other methods). `metrics_server(listen, source)` serves it with
berthd's one HTTP server core on TCP `[metrics] listen`. Served there rather than by
prometheus-client's threaded `start_http_server` because the figures (the proxy's counters,
the workers' replica memory) are plain objects that the trio loop mutates without locks:
reading them from another thread could see them half-updated. On trio, a scrape sees one
consistent moment, the listener lives in berthd's nursery (bind errors surface through
`nursery.start`, shutdown cancels it), and nothing outlives berthd. Rendering a snapshot
takes well under a millisecond for a workstation's worth of replicas, so it stays on the loop.

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
- The replicas' own series (`[[metrics.scrape]]`, `daemon.metrics.scrape`): re-exported as
  scraped, under their own names (so the model servers' dashboards work unchanged), each
  with `deployment` and `replica` labels added; a label of theirs with one of those names
  becomes `exported_deployment` / `exported_replica` (Prometheus' honor_labels = false). A
  family is written once, with the first replica's help and type; a replica whose family
  of that name has another type is left out of it, as is a series already written. Their
  families named `berth_*` are left out (they would pose as berthd's own). Sample
  timestamps are dropped: the series are as of berthd's latest scrape, and
  `berth_scrape_up{deployment, replica, port, path}` says whether that scrape worked.
  OpenMetrics: prometheus-client 0.26 writes a name with a colon (vllm:...) with the colon
  in `# TYPE` but an underscore in the samples unless UTF-8 names were asked for, so there
  such names are written with underscores throughout (what `escaping=underscores` in the
  answer's Content-Type promises); the text format's `X_created` series of a counter,
  histogram or summary `X` are left out there (OpenMetrics reserves that name for `X`).
"""

from __future__ import annotations

import gzip
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from daemon.gpu.model import GpuSample
from daemon.http.listeners import TcpListener
from daemon.http.server import Handler, HttpServer, Request, Response, text_error
from daemon.metrics.gateway_families import GatewayModelMetrics, gateway_families
from daemon.metrics.scrape import ScrapedFamilies, ScrapeTarget
from proxy.stats import EndpointStatistics, LatencySummary, StatusCounts

REPLICA_STATES = ("starting", "loading", "ready", "unhealthy", "draining", "stopped", "crashloop")
REQUEST_TIMEOUT = 10.0  # to read a request's body and write its answer
IDLE_TIMEOUT = 60.0  # a keep-alive connection waiting for its next scrape
# A scrape carries no body; one that does is refused (413) past this.
MAX_BODY = 64 * 1024


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
    scraped: tuple[ScrapedFamilies, ...] = ()  # the replicas' own series
    scrapes: tuple[tuple[ScrapeTarget, bool], ...] = ()  # each scrape, and whether it worked
    gateway: tuple[GatewayModelMetrics, ...] = ()  # the model gateway's, per model
    gateway_refused: tuple[tuple[int, int], ...] = ()  # (status, count) it answered itself


MetricsSource = Callable[[], Awaitable[MetricsSnapshot]]


class SnapshotCollector:
    """A prometheus-client Collector over one snapshot (`generate_latest(collector)`)."""

    def __init__(
        self, snapshot: MetricsSnapshot, *, openmetrics: bool = False, underscores: bool = False
    ) -> None:
        self.snapshot = snapshot
        # The scraped families as OpenMetrics (with underscore escaping) must have them.
        self.openmetrics = openmetrics
        self.underscores = underscores

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        info = InfoMetricFamily("berth_build", "berthd's version")
        info.add_metric([], {"version": snap.version})
        yield info
        yield from _deployment_families(snap.deployments)
        yield from _request_families(snap.deployments)
        yield from gateway_families(snap.gateway, snap.gateway_refused)
        yield from _gpu_families(snap.gpus)
        yield from _scrape_families(snap.scrapes)
        yield from scraped_families(
            snap.scraped, openmetrics=self.openmetrics, underscores=self.underscores
        )


def render(snapshot: MetricsSnapshot, accept: str = "") -> tuple[bytes, str]:
    """The exposition of `snapshot` in the format `accept` asks for, and its content type."""
    encoder, content_type = choose_encoder(accept)
    om = content_type.startswith("application/openmetrics-text")
    underscores = om and "escaping=allow-utf-8" not in content_type
    collector = SnapshotCollector(snapshot, openmetrics=om, underscores=underscores)
    return encoder(collector), content_type


def _scrape_families(scrapes: tuple[tuple[ScrapeTarget, bool], ...]) -> Iterator[Metric]:
    up = GaugeMetricFamily(
        "berth_scrape_up",
        "1 when berthd's latest scrape of the replica's own metrics worked, else 0",
        labels=["deployment", "replica", "port", "path"],
    )
    for target, ok in scrapes:
        labels = [target.deployment, target.replica_id, str(target.scrape.port), target.scrape.path]
        up.add_metric(labels, 1 if ok else 0)
    yield up


_OURS = ("deployment", "replica")
_CREATED_OF = frozenset({"counter", "histogram", "summary", "gaugehistogram"})


def scraped_families(
    scraped: Iterable[ScrapedFamilies], *, openmetrics: bool = False, underscores: bool = False
) -> list[Metric]:
    """The replicas' families merged into one per name, with their labels added (module
    doc); `openmetrics`, `underscores`: as OpenMetrics (with underscore escaping) has them."""
    merged: dict[str, Metric] = {}
    written: dict[str, set[tuple[str, tuple[tuple[str, str], ...]]]] = {}
    for replica in scraped:
        names = {f.name for f in replica.families if f.type in _CREATED_OF}
        for family in replica.families:
            if family.name.startswith("berth_"):
                continue
            if openmetrics and _created_of(family.name) in names:
                continue
            name = _om_name(family.name) if underscores else family.name
            out = merged.get(name)
            if out is None:
                out = merged[name] = Metric(name, family.documentation, family.type, family.unit)
                written[name] = set()
            elif out.type != family.type:
                continue
            seen = written[name]
            for sample in family.samples:
                labels = _relabel(sample.labels, replica.deployment, replica.replica_id)
                sample_name = _om_name(sample.name) if underscores else sample.name
                key = (sample_name, tuple(sorted(labels.items())))
                if key not in seen:
                    seen.add(key)
                    out.samples.append(Sample(sample_name, labels, sample.value))
    return list(merged.values())


def _relabel(labels: Mapping[str, str], deployment: str, replica: str) -> dict[str, str]:
    out = {(f"exported_{k}" if k in _OURS else k): v for k, v in labels.items()}
    out["deployment"] = deployment
    out["replica"] = replica
    return out


def _created_of(name: str) -> str | None:
    """`X` for a family named `X_created` (what the text format makes of X's created time)."""
    return name.removesuffix("_created") if name.endswith("_created") else None


def _om_name(name: str) -> str:
    return name.replace(":", "_")


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
    yield from _auth_families(deployments)
    yield from _traffic_families(deployments)
    window = GaugeMetricFamily(
        "berth_latency_window_seconds",
        "Length of the proxy's latency window behind the duration quantiles",
        labels=["deployment"],
    )
    for d in deployments:
        if d.endpoint is not None:
            window.add_metric([d.name], d.endpoint.window)
    yield window


def _auth_families(deployments: tuple[DeploymentMetrics, ...]) -> Iterator[Metric]:
    """A protected endpoint's requests by credential id (never the credential), and its
    401s. Open endpoints have neither."""
    allowed = CounterMetricFamily(
        "berth_endpoint_auth_requests",
        "Requests a protected endpoint let through, by credential id "
        '("key:ID" from berth keys, "secret:NAME", "user:NAME")',
        labels=["deployment", "credential"],
    )
    refused = CounterMetricFamily(
        "berth_endpoint_unauthorized_requests",
        "Requests a protected endpoint answered 401 (no or a wrong credential)",
        labels=["deployment"],
    )
    for d in deployments:
        stats = d.endpoint
        if stats is None or stats.by_credential is None:
            continue
        for credential, count in stats.by_credential:
            allowed.add_metric([d.name, credential], count)
        refused.add_metric([d.name], stats.unauthorized)
    yield from (allowed, refused)


def _traffic_families(deployments: tuple[DeploymentMetrics, ...]) -> Iterator[Metric]:
    """Admission (the endpoint's queue) and passive health (replicas ejected now)."""
    queued = GaugeMetricFamily(
        "berth_endpoint_queued_requests",
        "Requests waiting at the endpoint now, for a free slot or a starting replica",
        labels=["deployment"],
    )
    queued_total = CounterMetricFamily(
        "berth_endpoint_queued",
        "Requests that waited in the endpoint's queue",
        labels=["deployment"],
    )
    wait = GaugeMetricFamily(
        "berth_endpoint_queue_time_seconds",
        "How long requests that left the queue waited, over the latency window",
        labels=["deployment", "quantile"],
    )
    grpc = CounterMetricFamily(
        "berth_endpoint_grpc_calls",
        "gRPC calls through the endpoint, by the grpc-status they ended with",
        labels=["deployment", "grpc_status"],
    )
    ejected = GaugeMetricFamily(
        "berth_endpoint_ejected_replicas",
        "Replicas out of rotation by passive health (outlier ejection) now",
        labels=["deployment"],
    )
    for d in deployments:
        stats = d.endpoint
        if stats is None:
            continue
        queued.add_metric([d.name], stats.queued)
        queued_total.add_metric([d.name], stats.queued_total)
        for q, value in (("0.5", stats.queue_time.p50), ("0.99", stats.queue_time.p99)):
            if value is not None:
                wait.add_metric([d.name, q], value)
        ejected.add_metric([d.name], len(stats.ejected))
        for status, count in stats.grpc_status:
            grpc.add_metric([d.name, status], count)
    yield from (queued, queued_total, wait, ejected, grpc)


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


def metrics_page(source: MetricsSource) -> Handler:
    """The /metrics page as a handler of berthd's HTTP server core."""

    async def page(request: Request) -> Response:
        if request.path != "/metrics":
            return Response(status=404, text="not found: try /metrics\n")
        if request.method not in ("GET", "HEAD"):
            return Response(status=405, text="GET or HEAD\n", headers=(("Allow", "GET, HEAD"),))
        body, content_type = render(await source(), request.headers.get("accept", ""))
        headers: tuple[tuple[str, str], ...] = ()
        if gzip_accepted(request.headers.get("accept-encoding", "")):
            body = gzip.compress(body)
            headers = (("Content-Encoding", "gzip"),)
        return Response(body=body, content_type=content_type, headers=headers)

    return page


def metrics_server(
    listen: str, source: MetricsSource, *, idle_timeout: float = IDLE_TIMEOUT
) -> HttpServer[tuple[str, int]]:
    """/metrics over HTTP/1.1 on TCP `listen`; start with `nursery.start(server.run)`, which
    returns the bound (host, port) once it listens and raises OSError if it cannot."""
    return HttpServer(
        TcpListener(listen),
        metrics_page(source),
        name="metrics",
        max_body=MAX_BODY,
        idle_timeout=idle_timeout,
        request_timeout=REQUEST_TIMEOUT,
        errors=text_error,
    )
