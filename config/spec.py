"""The deployment spec as frozen dataclasses: what `config.parse.parse_spec` returns.

Every field DESIGN.md shows is here, with its unit made explicit: durations are float
seconds, sizes are int bytes, percentages are floats in percent. Defaults live here, in one
place; the parser fills them in, so nothing downstream ever re-derives a default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from config.secret_ref import SecretRef


class MetricName(StrEnum):
    CPU = "cpu"
    MEMORY = "memory"
    GPU_UTILIZATION = "gpu_utilization"
    GPU_MEMORY = "gpu_memory"
    REQUEST_DURATION = "request_duration"
    CONCURRENCY = "concurrency"
    PROMETHEUS = "prometheus"  # a gauge scraped from the replicas ([[metrics.scrape]])
    QUEUE = "queue"  # requests waiting at the endpoint (for a slot or a replica), per replica


class Summary(StrEnum):
    AVERAGE = "average"
    P95 = "p95"


class PullPolicy(StrEnum):
    MISSING = "missing"  # pull only when the image is not on the host
    ALWAYS = "always"  # pull (re-resolve the tag) once for each new revision
    NEVER = "never"  # never pull: the image must be on the host already


class UpdateStrategy(StrEnum):
    SURGE = "surge"  # a new replica first, then an old one goes (may wait for room)
    REPLACE = "replace"  # an old replica goes first, its replacement takes its room


class MountType(StrEnum):
    BIND = "bind"
    VOLUME = "volume"
    GIT = "git"
    MODEL = "model"


class Balance(StrEnum):
    ROUND_ROBIN = "round_robin"  # each request to the next replica in turn
    LEAST_REQUEST = "least_request"  # fewer requests in flight, of two picked at random


class RetryPolicy(StrEnum):
    IDEMPOTENT = "idempotent"  # replay only what cannot have been half-done (GET, PUT, ...)
    ALL = "all"  # also a POST whose replica died before answering, once, within a budget


class UpstreamProtocol(StrEnum):
    HTTP1 = "http1"  # HTTP/1.1 to the replica (an HTTP/2 client's requests are translated)
    H2C = "h2c"  # HTTP/2 over cleartext, by prior knowledge (gRPC servers)


class IpcMode(StrEnum):
    PRIVATE = "private"  # a namespace of its own that no other container may join
    SHAREABLE = "shareable"  # others may join it (`--ipc container:ID`); never the host's


# The rlimits a spec may set (`[resources.ulimits]`), by setrlimit(2)'s name without RLIMIT_.
ULIMIT_NAMES: Final = ("memlock", "nofile", "stack")
RLIM_INFINITY: Final = 2**64 - 1  # as the kernel (and libpod) write "unlimited"
UNLIMITED: Final = "unlimited"  # ... and as the spec does (memlock, stack)


@dataclass(frozen=True)
class Ulimit:
    soft: int  # bytes for memlock and stack, a count for nofile; RLIM_INFINITY: unlimited
    hard: int


@dataclass(frozen=True)
class Resources:
    cpus: float | None = None
    memory: int | None = None  # bytes
    gpus: int = 0  # whole GPUs per replica
    gpu_memory: int | None = None  # bytes of VRAM per replica (shared GPUs); exclusive with gpus
    shm_size: int | None = None  # bytes of /dev/shm; None: Podman's default (64 MB)
    ipc: IpcMode = IpcMode.PRIVATE
    # name (one of ULIMIT_NAMES) -> limit; one not named: the host's containers.conf default
    ulimits: Mapping[str, Ulimit] = field(default_factory=dict)


@dataclass(frozen=True)
class Replicas:
    min: int = 1
    max: int = 1
    # Seconds from the last request after which a `min = 0` deployment is scaled to zero
    # (a TTL from the last request, not from the load); None: the autoscaler alone decides.
    scale_to_zero_after: float | None = None

    @property
    def fixed(self) -> bool:
        return self.min == self.max


@dataclass(frozen=True)
class SeriesSelector:
    """A scraped series by name and exact label values: `vllm:num_requests_waiting` or
    `vllm:num_requests_waiting{model_name="x"}` (a documented subset of PromQL's selector:
    `=` matchers only). Labels are sorted by name, so equal selectors compare equal."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        if not self.labels:
            return self.name
        shown = ",".join(f'{k}="{_escape_label_value(v)}"' for k, v in self.labels)
        return f"{self.name}{{{shown}}}"

    def matches(self, name: str, labels: Mapping[str, str]) -> bool:
        return name == self.name and all(labels.get(k) == v for k, v in self.labels)


def _escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@dataclass(frozen=True)
class AutoscaleMetric:
    metric: MetricName
    summary: Summary = Summary.AVERAGE
    # percent for cpu/memory/gpu_*, seconds for request_duration, in-flight per replica for
    # concurrency, the gauge's value per replica for prometheus
    target: float = 0.0
    query: SeriesSelector | None = None  # prometheus only: the scraped gauge to read


@dataclass(frozen=True)
class Autoscale:
    metrics: tuple[AutoscaleMetric, ...] = ()
    scale_down_delay: float = 300.0


@dataclass(frozen=True)
class Probe:
    port: int  # defaults to the spec's app port
    path: str | None = None  # None with tcp=True
    tcp: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    failure_threshold: int = 3
    success_threshold: int = 1
    # Startup only: how long a replica may take to pass, from its start. None: the
    # Kubernetes budget, initial_delay + failure_threshold x period.
    timeout_total: float | None = None

    @property
    def budget(self) -> float:
        """Seconds from the container's start to the last startup probe that may fail."""
        if self.timeout_total is not None:
            return self.timeout_total
        return self.initial_delay + self.failure_threshold * self.period


@dataclass(frozen=True)
class Health:
    startup: Probe | None = None
    readiness: Probe | None = None
    liveness: Probe | None = None


# `[endpoint]`'s timeouts in seconds, the proxy's defaults too (`proxy.balancer.EndpointTimeouts`).
ENDPOINT_CONNECT_TIMEOUT: Final = 5.0
# Never cut a long model generation or stream: as Knative's revision timeout.
ENDPOINT_READ_TIMEOUT: Final = 300.0
ENDPOINT_CLIENT_IDLE_TIMEOUT: Final = 60.0


@dataclass(frozen=True)
class BasicUser:
    user: str
    password: SecretRef


@dataclass(frozen=True)
class EndpointAuth:
    """`[endpoint.auth]`: the endpoint answers 401 to a request without one of these
    credentials (or a key made by `berth keys create`, which count too)."""

    api_keys: tuple[SecretRef, ...] = ()  # bearer tokens (Authorization: Bearer, x-api-key)
    basic: tuple[BasicUser, ...] = ()
    forward_auth: bool = False  # pass Authorization / x-api-key on to the replica


@dataclass(frozen=True)
class EndpointTls:
    """`[endpoint.tls]`: the endpoint speaks TLS (1.2+) with this certificate chain and key,
    PEM files under berthd's `credentials_roots` (read through `config.credentials`)."""

    cert: str
    key: str


# Where an endpoint listens when its spec says no `bind`: loopback, unless it is protected.
BIND_LOOPBACK: Final = "127.0.0.1"
BIND_ALL: Final = "0.0.0.0"


def default_bind(auth: EndpointAuth | None) -> str:
    return BIND_ALL if auth is not None else BIND_LOOPBACK


@dataclass(frozen=True)
class Outlier:
    """`[endpoint.outlier]`: passive health, as Envoy's outlier detection. A replica that
    answers `consecutive_5xx` 5xx in a row, or fails `failures` times (no answer in
    `read_timeout`, a reset, a broken response) within `window`, leaves the rotation for
    `ejection_time`, doubled on each repeat up to `max_ejection_time`; its next passing
    readiness probe after that brings it back. Never more than `max_ejected_percent` of the
    replicas are out at once (and never the last one). 0 turns a trigger off."""

    consecutive_5xx: int = 5
    failures: int = 3
    window: float = 30.0
    ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejected_percent: float = 50.0


# `[endpoint]`'s admission defaults: a queue (of requests waiting for a free slot, or for a
# replica that is starting) long enough for a burst, a wait short enough to fail a client
# before its own timeout does.
MAX_QUEUE_DEFAULT: Final = 100
QUEUE_TIMEOUT_DEFAULT: Final = 30.0


@dataclass(frozen=True)
class Endpoint:
    port: int
    bind: str = BIND_LOOPBACK
    # False: the spec says no `bind`, so `bind` is `default_bind(auth)` and follows it. A
    # written bind is kept in the canonical form (and so in the spec_id) even when it
    # equals that default: it stays put when `[endpoint.auth]` comes or goes.
    bind_given: bool = False
    connect_timeout: float = ENDPOINT_CONNECT_TIMEOUT
    read_timeout: float = ENDPOINT_READ_TIMEOUT
    client_idle_timeout: float = ENDPOINT_CLIENT_IDLE_TIMEOUT
    # How long a request waits at an endpoint with no ready replica while one starts (scale
    # from zero): as long as a large model takes to load.
    cold_start_timeout: float = 600.0
    # Admission: requests in flight at once per replica (None: no cap); requests waiting
    # for a slot (or for a starting replica) per endpoint; how long one waits for a busy
    # replica's slot. Over the queue, or past queue_timeout: 429 with Retry-After.
    max_concurrency: int | None = None
    max_queue: int = MAX_QUEUE_DEFAULT
    queue_timeout: float = QUEUE_TIMEOUT_DEFAULT
    balance: Balance = Balance.ROUND_ROBIN
    retry: RetryPolicy = RetryPolicy.IDEMPOTENT
    upstream_protocol: UpstreamProtocol = UpstreamProtocol.HTTP1
    outlier: Outlier = Outlier()
    # Client connections held open at once; None: berthd's share of its descriptors
    # (`proxy.admission`). Over it, new connections wait in the listen backlog.
    max_connections: int | None = None
    # Peers (canonical CIDRs) whose Forwarded / X-Real-IP / X-Forwarded-* are kept.
    trusted_proxies: tuple[str, ...] = ()
    auth: EndpointAuth | None = None  # `[endpoint.auth]`; None: open (unless keys exist)
    tls: EndpointTls | None = None  # `[endpoint.tls]`; None: plain HTTP

    def __post_init__(self) -> None:
        if not self.bind_given and self.bind != default_bind(self.auth):
            object.__setattr__(self, "bind_given", True)  # not the default: it was chosen


@dataclass(frozen=True)
class Update:
    max_surge: int = 1
    max_unavailable: int = 0
    progress_deadline: float = 600.0
    # How long a replica that leaves (an update, a scale-down, a restart, berthd stopping)
    # gets to finish its in-flight requests: a long generation must not be cut.
    drain_timeout: float = 30.0
    # None: surge, and replace in place while a surge replica cannot be placed (no GPU or
    # VRAM free on the box): what works, for GPU deployments on a full box.
    strategy: UpdateStrategy | None = None


# `[[metrics.scrape]]`'s defaults: Prometheus' own interval, and a timeout within it.
SCRAPE_PATH: Final = "/metrics"
SCRAPE_PERIOD: Final = 15.0
SCRAPE_TIMEOUT: Final = 5.0  # or the period, when that is shorter


@dataclass(frozen=True)
class Scrape:
    """One `[[metrics.scrape]]` entry: where berthd reads a replica's own Prometheus metrics."""

    port: int  # a container port (the app's by default), published on 127.0.0.1
    path: str = SCRAPE_PATH
    period: float = SCRAPE_PERIOD
    timeout: float = SCRAPE_TIMEOUT


@dataclass(frozen=True)
class Metrics:
    scrape: tuple[Scrape, ...] = ()


@dataclass(frozen=True)
class Mount:
    type: MountType
    target: str
    source: str = ""  # host path (bind), volume name (volume), URL (git), model name (model)
    read_only: bool = True
    ref: str | None = None  # git only
    credentials_file: str | None = None  # git only
    credentials: SecretRef | None = None  # git only; the file's contents, from a secret


@dataclass(frozen=True)
class Registry:
    auth_file: str | None = None
    username: str | None = None
    password_file: str | None = None
    password: SecretRef | None = None  # or the password from a secret


@dataclass(frozen=True)
class Gateway:
    """`[gateway]`: the deployment serves these models (names and aliases, unique on the box)
    through berthd's model gateway. `rewrite_model`: the name the server expects, written
    into the request's `model` on the way; `priority` (higher is kept longer), `group`
    (models that may share the box) and `min_idle` (seconds idle before a swap may evict it)
    are the swap's inputs."""

    models: tuple[str, ...]
    rewrite_model: str | None = None
    priority: int = 0
    group: str | None = None
    min_idle: float = 0.0


@dataclass(frozen=True)
class DeploymentSpec:
    name: str
    image: str
    port: int
    endpoint: Endpoint
    command: tuple[str, ...] | None = None
    enabled: bool = True
    stop_timeout: float = 10.0  # seconds between SIGTERM and SIGKILL when a replica stops
    pull: PullPolicy = PullPolicy.MISSING
    env: Mapping[str, str | SecretRef] = field(default_factory=dict)  # a value or a reference
    resources: Resources = field(default_factory=Resources)
    replicas: Replicas = field(default_factory=Replicas)
    autoscale: Autoscale = field(default_factory=Autoscale)
    health: Health = field(default_factory=Health)
    update: Update = field(default_factory=Update)
    mounts: tuple[Mount, ...] = ()
    registry: Registry | None = None
    metrics: Metrics = field(default_factory=Metrics)
    gateway: Gateway | None = None  # `[gateway]`; None: not served by the model gateway
