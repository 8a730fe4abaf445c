"""The canonical form of a spec, and the ids derived from it.

`spec_to_dict(spec)` is plain JSON-able data in the spec's own vocabulary, with units
normalised (durations as canonical text such as "1m30s", sizes as "512Mi", replicas as
min/max), so `spec_from_dict(spec_to_dict(s)) == s` and it can be shown, diffed or written
back as TOML.

The ids hash that form with the defaults left out (`defaults=False`): two specs that mean
the same thing get the same id however they are written, any change in meaning gives a new
one, and a berth upgrade that adds a field with a default does not change every existing id
(which would roll every deployment on the host at once). `[endpoint] bind` is the one
exception to "defaults left out": a written bind is kept even when it equals the default,
because the default follows `[endpoint.auth]` (loopback unless protected) and a written one
does not; an unwritten one is left out, so the ids of specs without a bind stay as they were.

- `spec_id`: the whole spec. Same id -> `berth apply` is "unchanged".
- `template_id`: only what shapes the containers themselves (name, image, command, port,
  env, resources, mounts, registry, stop_timeout, and the container ports `[[metrics.scrape]]`
  needs published besides the app port). A change to replicas, autoscale, health, endpoint,
  update, enabled or a scrape's path, period or timeout keeps it, so berthd need not replace
  any replica for those; a scrape on a port not published yet replaces them (Podman cannot
  publish a port on a running container). `[gateway]` is routing only: it keeps it too.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from config.spec import (
    RLIM_INFINITY,
    SCRAPE_PATH,
    SCRAPE_PERIOD,
    SCRAPE_TIMEOUT,
    UNLIMITED,
    Autoscale,
    AutoscaleMetric,
    DeploymentSpec,
    Endpoint,
    EndpointAuth,
    Gateway,
    IpcMode,
    MetricName,
    Metrics,
    Mount,
    Outlier,
    Probe,
    Registry,
    Replicas,
    Resources,
    Ulimit,
    Update,
)
from config.units import format_duration, format_size

ID_LENGTH = 12
TEMPLATE_KEYS = (
    "name",
    "image",
    "command",
    "port",
    "env",
    "resources",
    "mounts",
    "registry",
    "stop_timeout",
)
_DEFAULT_ENDPOINT = Endpoint(port=0)
_DEFAULT_PROBE = Probe(port=0)


def spec_to_dict(spec: DeploymentSpec, *, defaults: bool = True) -> dict[str, Any]:
    """The spec as canonical data; `defaults=False` leaves out every value equal to its default."""
    full = defaults
    d: dict[str, Any] = {"name": spec.name, "image": spec.image}
    if spec.command is not None:
        d["command"] = list(spec.command)
    d["port"] = spec.port
    _put(d, "enabled", spec.enabled, True, full)
    _put(d, "stop_timeout", format_duration(spec.stop_timeout), "10s", full)
    _put(d, "pull", spec.pull.value, "missing", full)
    env = {k: v if isinstance(v, str) else v.to_dict() for k, v in sorted(spec.env.items())}
    _put(d, "env", env, {}, full)  # a secret as its reference, never its value
    _put(d, "resources", _resources(spec.resources, full), {}, full)
    _put(d, "replicas", _replicas(spec.replicas), _ONE, full)
    _put(d, "autoscale", _autoscale(spec.autoscale, full), {}, full)
    health = {
        kind: _probe(probe, spec.port, full)
        for kind, probe in (
            ("startup", spec.health.startup),
            ("readiness", spec.health.readiness),
            ("liveness", spec.health.liveness),
        )
        if probe is not None
    }
    _put(d, "health", health, {}, full)
    d["endpoint"] = _endpoint(spec.endpoint, full)
    _put(d, "update", _update(spec.update, full), {}, full)
    _put(d, "mounts", [_mount(m) for m in spec.mounts], [], full)
    if spec.registry is not None:
        d["registry"] = _registry(spec.registry)
    _put(d, "metrics", _metrics(spec.metrics, spec.port, full), {}, full)
    if spec.gateway is not None:
        d["gateway"] = _gateway(spec.gateway, full)
    return d


def spec_id(spec: DeploymentSpec) -> str:
    """12 hex digits naming this spec's meaning: equal for reformatted text, new on any change."""
    return _digest(spec_to_dict(spec, defaults=False))


def template_id(spec: DeploymentSpec) -> str:
    """12 hex digits naming what the replicas' containers are made from (see module doc)."""
    d = spec_to_dict(spec, defaults=False)
    template = {k: d[k] for k in TEMPLATE_KEYS if k in d}
    if ports := scrape_ports(spec):
        template["metrics_ports"] = ports  # only when set: older template ids stay
    if ports := probe_ports(spec):
        # Published at create like the scrape ports: a probe moved to a port the running
        # containers do not publish needs new containers (else it can never answer).
        template["probe_ports"] = ports
    return _digest(template)


def scrape_ports(spec: DeploymentSpec) -> list[int]:
    """The container ports `[[metrics.scrape]]` reads besides the app port (published too)."""
    return sorted({s.port for s in spec.metrics.scrape} - {spec.port})


def probe_ports(spec: DeploymentSpec) -> list[int]:
    """The container ports the probes reach besides the app port (published too)."""
    probes = (spec.health.startup, spec.health.readiness, spec.health.liveness)
    return sorted({p.port for p in probes if p is not None} - {spec.port})


def _digest(data: dict[str, Any]) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:ID_LENGTH]


_ONE = {"min": 1, "max": 1}


def _put(d: dict[str, Any], key: str, value: object, default: object, full: bool) -> None:
    if full or value != default:
        d[key] = value


def _replicas(r: Replicas) -> dict[str, Any]:
    d: dict[str, Any] = {"min": r.min, "max": r.max}
    if r.scale_to_zero_after is not None:  # only when set: older ids stay
        d["scale_to_zero_after"] = format_duration(r.scale_to_zero_after)
    return d


def _gateway(g: Gateway, full: bool) -> dict[str, Any]:
    d: dict[str, Any] = {"models": list(g.models)}
    if g.rewrite_model is not None:
        d["rewrite_model"] = g.rewrite_model
    _put(d, "priority", g.priority, 0, full)
    if g.group is not None:
        d["group"] = g.group
    _put(d, "min_idle", format_duration(g.min_idle), _dur(0.0), full)
    return d


def _resources(r: Resources, full: bool) -> dict[str, Any]:
    d: dict[str, Any] = {}
    if r.cpus is not None:
        d["cpus"] = float(r.cpus)
    if r.memory is not None:
        d["memory"] = format_size(r.memory)
    _put(d, "gpus", r.gpus, 0, full)
    if r.gpu_memory is not None:
        d["gpu_memory"] = format_size(r.gpu_memory)
    if r.shm_size is not None:
        d["shm_size"] = format_size(r.shm_size)
    _put(d, "ipc", r.ipc.value, IpcMode.PRIVATE.value, full)
    _put(d, "ulimits", {name: _ulimit(name, u) for name, u in sorted(r.ulimits.items())}, {}, full)
    return d


def _ulimit(name: str, u: Ulimit) -> object:
    if u.soft == u.hard:
        return format_limit(name, u.hard)
    return {"soft": format_limit(name, u.soft), "hard": format_limit(name, u.hard)}


def format_limit(name: str, value: int) -> str | int:
    """A ulimit's value as the spec writes it: "unlimited", a size ("64Mi") or a count."""
    if value == RLIM_INFINITY:
        return UNLIMITED
    return value if name == "nofile" else format_size(value)


def _autoscale(a: Autoscale, full: bool) -> dict[str, Any]:
    d: dict[str, Any] = {}
    _put(d, "metrics", [_metric(m, full) for m in a.metrics], [], full)
    _put(d, "scale_down_delay", format_duration(a.scale_down_delay), "5m", full)
    return d


def _metric(m: AutoscaleMetric, full: bool) -> dict[str, Any]:
    target: object
    if m.metric is MetricName.REQUEST_DURATION:
        target = format_duration(m.target)
    elif m.metric in (MetricName.CONCURRENCY, MetricName.PROMETHEUS):
        target = float(m.target)
    else:
        target = f"{_number(m.target)}%"
    d: dict[str, Any] = {"metric": m.metric.value}
    _put(d, "summary", m.summary.value, "average", full)
    if m.query is not None:
        d["query"] = str(m.query)
    d["target"] = target
    return d


def _metrics(m: Metrics, app_port: int, full: bool) -> dict[str, Any]:
    d: dict[str, Any] = {}
    scrapes = []
    for s in m.scrape:
        entry: dict[str, Any] = {}
        _put(entry, "port", s.port, app_port, full)
        _put(entry, "path", s.path, SCRAPE_PATH, full)
        _put(entry, "period", format_duration(s.period), _dur(SCRAPE_PERIOD), full)
        default_timeout = min(SCRAPE_TIMEOUT, s.period)
        _put(entry, "timeout", format_duration(s.timeout), _dur(default_timeout), full)
        scrapes.append(entry)
    _put(d, "scrape", scrapes, [], full)
    return d


def _probe(p: Probe, app_port: int, full: bool) -> dict[str, Any]:
    base = _DEFAULT_PROBE
    d: dict[str, Any] = {"tcp": True} if p.tcp else {"path": p.path}
    _put(d, "port", p.port, app_port, full)
    _put(d, "headers", dict(sorted(p.headers.items())), {}, full)
    _put(d, "initial_delay", format_duration(p.initial_delay), _dur(base.initial_delay), full)
    _put(d, "period", format_duration(p.period), _dur(base.period), full)
    _put(d, "timeout", format_duration(p.timeout), _dur(base.timeout), full)
    _put(d, "failure_threshold", p.failure_threshold, base.failure_threshold, full)
    _put(d, "success_threshold", p.success_threshold, base.success_threshold, full)
    if p.timeout_total is not None:
        d["timeout_total"] = format_duration(p.timeout_total)
    return d


def _endpoint(e: Endpoint, full: bool) -> dict[str, Any]:
    base = _DEFAULT_ENDPOINT
    d: dict[str, Any] = {"port": e.port}
    if e.bind_given:  # written, even as the default: see `Endpoint.bind_given`
        d["bind"] = e.bind
    for key in ("connect_timeout", "read_timeout", "client_idle_timeout", "cold_start_timeout"):
        value, default = getattr(e, key), getattr(base, key)
        _put(d, key, format_duration(value), format_duration(default), full)
    if e.max_connections is not None:
        d["max_connections"] = e.max_connections
    _put(d, "trusted_proxies", list(e.trusted_proxies), [], full)
    if e.max_concurrency is not None:
        d["max_concurrency"] = e.max_concurrency
    _put(d, "max_queue", e.max_queue, base.max_queue, full)
    queue_timeout = format_duration(e.queue_timeout)
    _put(d, "queue_timeout", queue_timeout, format_duration(base.queue_timeout), full)
    _put(d, "balance", e.balance.value, base.balance.value, full)
    _put(d, "retry", e.retry.value, base.retry.value, full)
    _put(d, "upstream_protocol", e.upstream_protocol.value, base.upstream_protocol.value, full)
    outlier = _outlier(e.outlier, full)
    if outlier:
        d["outlier"] = outlier
    if e.auth is not None:  # present, even empty: it turns authentication on
        d["auth"] = _auth(e.auth, full)
    if e.tls is not None:
        d["tls"] = {"cert": e.tls.cert, "key": e.tls.key}
    return d


def _outlier(o: Outlier, full: bool) -> dict[str, Any]:
    base = Outlier()
    d: dict[str, Any] = {}
    _put(d, "consecutive_5xx", o.consecutive_5xx, base.consecutive_5xx, full)
    _put(d, "failures", o.failures, base.failures, full)
    for key in ("window", "ejection_time", "max_ejection_time"):
        value, default = getattr(o, key), getattr(base, key)
        _put(d, key, format_duration(value), format_duration(default), full)
    _put(d, "max_ejected_percent", o.max_ejected_percent, base.max_ejected_percent, full)
    return d


def _auth(a: EndpointAuth, full: bool) -> dict[str, Any]:
    d: dict[str, Any] = {}
    _put(d, "api_keys", [ref.to_dict() for ref in a.api_keys], [], full)
    basic = [{"user": u.user, "password": u.password.to_dict()} for u in a.basic]
    _put(d, "basic", basic, [], full)
    _put(d, "forward_auth", a.forward_auth, False, full)
    return d


def _update(u: Update, full: bool) -> dict[str, Any]:
    base = Update()
    d: dict[str, Any] = {}
    _put(d, "max_surge", u.max_surge, base.max_surge, full)
    _put(d, "max_unavailable", u.max_unavailable, base.max_unavailable, full)
    progress = format_duration(u.progress_deadline)
    _put(d, "progress_deadline", progress, _dur(base.progress_deadline), full)
    _put(d, "drain_timeout", format_duration(u.drain_timeout), _dur(base.drain_timeout), full)
    if u.strategy is not None:  # unset (surge, else replace when no room) has no TOML value
        d["strategy"] = u.strategy.value
    return d


def _mount(m: Mount) -> dict[str, Any]:
    d: dict[str, Any] = {
        "type": m.type.value,
        "source": m.source,
        "target": m.target,
        "read_only": m.read_only,
    }
    if m.ref is not None:
        d["ref"] = m.ref
    if m.credentials_file is not None:
        d["credentials_file"] = m.credentials_file
    if m.credentials is not None:
        d["credentials"] = m.credentials.to_dict()  # the reference, never the value
    return d


def _registry(r: Registry) -> dict[str, Any]:
    fields = {"auth_file": r.auth_file, "username": r.username, "password_file": r.password_file}
    d: dict[str, Any] = {k: v for k, v in fields.items() if v is not None}
    if r.password is not None:
        d["password"] = r.password.to_dict()  # the reference, never the value
    return d


def _dur(seconds: float) -> str:
    return format_duration(seconds)


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))
