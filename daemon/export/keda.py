"""Autoscaling on Kubernetes: an `autoscaling/v2` HPA, or a KEDA `ScaledObject`.

`plan(spec)` decides: no autoscaler (a fixed count, `enabled = false`, or no metric left to
scale on), an HPA (every metric is cpu or memory and `replicas.min >= 1`), or a KEDA
ScaledObject (any other metric, or `min = 0`: an HPA can express neither). Never both on
one Deployment. berth's `queue` metric (its own admission queue) has no equivalent and
becomes a LeftOut. `triggers` are shared with KServe's `autoScaling` (same queries).

Queries (Prometheus, PromQL) for what berth measured at its endpoint read the ingress in
front of the Service instead: ingress-nginx's request-duration histogram, labelled by
`exported_service`. Another ingress needs another query (said in the file's comments).
Series of the pods themselves are matched by the Deployment's pod name shape,
`NAME-HASH-SUFFIX` (`pod_matcher`: the ReplicaSet's hash, then the pod's suffix), so a
deployment `vllm` does not also read a `vllm-embed`'s pods (`NAME-.*` would).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Final

from config.spec import AutoscaleMetric, DeploymentSpec, MetricName, SeriesSelector, Summary
from config.units import format_duration
from daemon.export.bundle import LeftOut
from daemon.export.kube_mounts import dns1035

PROMETHEUS_ADDRESS: Final = "http://prometheus.monitoring.svc:9090"
MAX_STABILIZATION: Final = 3600  # Kubernetes' limit on stabilizationWindowSeconds
# a pod's generateName is cut at 58 (63 less 5 random characters); a ReplicaSet hash is
# at most 10 characters (rand.SafeEncodeString of a 32-bit hash)
_GENERATE_NAME_MAX: Final = 58
_HASH_MAX: Final = 10
_NGINX = "nginx_ingress_controller_request_duration_seconds"
_RESOURCE = frozenset({MetricName.CPU, MetricName.MEMORY})


@dataclass
class Plan:
    kind: str | None  # None, "hpa" or "keda"
    min_replicas: int  # what the autoscaler (or the fixed Deployment) holds at least
    metrics: list[tuple[int, AutoscaleMetric]] = field(default_factory=list)  # (index, m)
    left_out: list[LeftOut] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)


def plan(spec: DeploymentSpec) -> Plan:
    r = spec.replicas
    if not spec.enabled:
        return Plan(None, 0, comments=["enabled = false: replicas 0 and no autoscaler"])
    if r.fixed:
        return Plan(None, r.min)
    out = Plan(None, r.min)
    for i, m in enumerate(spec.autoscale.metrics):
        if m.metric == MetricName.QUEUE:
            out.left_out.append(
                LeftOut(
                    f"autoscale.metrics[{i}]",
                    "queue: berth's own admission queue has no equivalent here; no trigger "
                    "is made for it (scale on a server's own queue gauge: metric = "
                    '"prometheus")',
                )
            )
        else:
            out.metrics.append((i, m))
    if _keda_needed(out.metrics, r.min):
        out.metrics = [(i, m) for i, m in out.metrics if not _cpu_unrequested(spec, i, m, out)]
    if not out.metrics:
        out.min_replicas = max(r.min, 1)
        out.left_out.append(
            LeftOut(
                "replicas.max",
                f"no autoscale metric to scale on: the Deployment runs {out.min_replicas} "
                f"replica(s), not {r.min}-{r.max}",
            )
        )
        if r.min == 0:
            out.left_out.append(
                LeftOut(
                    "replicas.min",
                    "0: nothing scales to zero with no autoscale metric (berth scales on "
                    "requests); the Deployment keeps one replica",
                )
            )
        _no_scale_to_zero(spec, out)
        return out
    only_resources = all(m.metric in _RESOURCE for _, m in out.metrics)
    out.kind = "keda" if _keda_needed(out.metrics, r.min) else "hpa"
    if r.min == 0:
        if only_resources:
            out.min_replicas = 1
            out.left_out.append(
                LeftOut(
                    "replicas.min",
                    "0: KEDA cannot scale to zero on cpu or memory alone; minReplicaCount is 1",
                )
            )
            _no_scale_to_zero(spec, out)
        else:
            out.left_out.append(
                LeftOut(
                    "replicas.min",
                    "0: a request that arrives while no replica runs is not held "
                    "(endpoint.cold_start_timeout): the ingress answers 503 until KEDA "
                    "has started one (KEDA's HTTP add-on holds requests)",
                )
            )
    for i, m in out.metrics:
        if m.metric in (MetricName.MEMORY, MetricName.GPU_MEMORY):
            out.left_out.append(
                LeftOut(
                    f"autoscale.metrics[{i}]",
                    f"{m.metric.value}: berth counts a deployment with no requests as zero "
                    "load; here the memory an idle server holds keeps its replicas",
                )
            )
    return out


def _no_scale_to_zero(spec: DeploymentSpec, out: Plan) -> None:
    ttl = spec.replicas.scale_to_zero_after
    if ttl is not None:
        out.left_out.append(
            LeftOut(
                "replicas.scale_to_zero_after",
                f"{format_duration(ttl)}: nothing here scales to zero (replicas.min), so no "
                "idle replica is stopped",
            )
        )


def _keda_needed(metrics: list[tuple[int, AutoscaleMetric]], least: int) -> bool:
    return least == 0 or any(m.metric not in _RESOURCE for _, m in metrics)


def _cpu_unrequested(spec: DeploymentSpec, i: int, m: AutoscaleMetric, out: Plan) -> bool:
    """A cpu metric with no `resources.cpus`, which KEDA's admission webhook refuses (a cpu
    trigger needs the container's cpu request); an HPA takes it as an AverageValue."""
    if cpu_average(spec, m) is None:
        return False
    out.left_out.append(
        LeftOut(
            f"autoscale.metrics[{i}]",
            "cpu with no resources.cpus: KEDA refuses a cpu trigger on a container with no "
            "cpu request; set resources.cpus to scale on it",
        )
    )
    return True


def stabilization(spec: DeploymentSpec, left_out: list[LeftOut]) -> int:
    delay = spec.autoscale.scale_down_delay
    window = math.ceil(delay - 1e-9)
    if window > MAX_STABILIZATION:
        left_out.append(
            LeftOut(
                "autoscale.scale_down_delay",
                f"{format_duration(delay)} is cut to {MAX_STABILIZATION}s, Kubernetes' longest "
                "stabilizationWindowSeconds",
            )
        )
        return MAX_STABILIZATION
    return window


def number(value: float) -> str:
    """A threshold as KEDA's metadata wants it: a string, no exponent."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text or "0"


def percent(m: AutoscaleMetric, field_path: str, left_out: list[LeftOut]) -> int:
    whole = max(1, round(m.target))
    if whole != m.target:
        left_out.append(LeftOut(field_path, f"{m.target:g}% becomes {whole}%: a whole percent"))
    return whole


def cpu_average(spec: DeploymentSpec, m: AutoscaleMetric) -> str | None:
    """cpu with no `resources.cpus` (no request: no Utilization): the target's share of one
    CPU as an average value ("700m"); None when Utilization works."""
    if m.metric != MetricName.CPU or spec.resources.cpus is not None:
        return None
    return f"{max(1, round(m.target * 10))}m"


def pod_matcher(deployment: str) -> str:
    """The PromQL matcher of a Deployment's pods: `DEPLOYMENT-<ReplicaSet hash>-<suffix>`.
    A pod's generateName (`DEPLOYMENT-HASH-`, the hash up to 10 characters) is cut at 58
    characters, so for a name over 46 characters the hash may be cut: a prefix match."""
    if len(deployment) + len("-") + _HASH_MAX + len("-") > _GENERATE_NAME_MAX:
        return f'pod=~"{f"{deployment}-"[:_GENERATE_NAME_MAX]}[a-z0-9-]+"'
    return f'pod=~"{deployment}-[a-z0-9]+-[a-z0-9]+"'


def prometheus_query(
    spec: DeploymentSpec,
    m: AutoscaleMetric,
    *,
    deployment: str | None = None,
    service: str | None = None,
) -> tuple[str, str]:
    """(PromQL query, KEDA metricType) for a metric that is not cpu or memory; `deployment`
    names the Deployment whose pods are read (the spec's name by default), `service` the
    Service the ingress sends to (the Kubernetes export's by default)."""
    pods = pod_matcher(deployment or spec.name)
    if m.metric == MetricName.PROMETHEUS:
        assert m.query is not None
        return f"sum({_with_matcher(m.query, pods)})", "AverageValue"
    svc = f'exported_service="{service or dns1035(spec.name)}"'
    if m.metric == MetricName.CONCURRENCY:
        return f"sum(rate({_NGINX}_sum{{{svc}}}[1m]))", "AverageValue"
    if m.metric == MetricName.REQUEST_DURATION:
        if m.summary == Summary.P95:
            q = f"histogram_quantile(0.95, sum by (le) (rate({_NGINX}_bucket{{{svc}}}[2m])))"
        else:
            q = f"sum(rate({_NGINX}_sum{{{svc}}}[2m])) / sum(rate({_NGINX}_count{{{svc}}}[2m]))"
        return q, "Value"
    if m.metric == MetricName.GPU_UTILIZATION:
        return f"avg(DCGM_FI_DEV_GPU_UTIL{{{pods}}})", "Value"
    used, free = f"DCGM_FI_DEV_FB_USED{{{pods}}}", f"DCGM_FI_DEV_FB_FREE{{{pods}}}"
    return f"avg({used} / ({used} + {free}) * 100)", "Value"


def _with_matcher(sel: SeriesSelector, matcher: str) -> str:
    text = str(sel)
    return f"{text[:-1]},{matcher}}}" if sel.labels else f"{text}{{{matcher}}}"


QUERY_COMMENTS: Final = (
    f"Prometheus triggers read {PROMETHEUS_ADDRESS}: a placeholder, set your server's address.",
    "concurrency and request_duration read ingress-nginx's request-duration histogram "
    "(exported_service = the Service); another ingress needs another query.",
    "gpu_* read NVIDIA's DCGM exporter (labels pod/namespace; behind a ServiceMonitor "
    "without honorLabels they are exported_pod/exported_namespace).",
    "Scraped gauges and gpu_* are matched by the Deployment's pod names, "
    "pod=~\"NAME-[a-z0-9]+-[a-z0-9]+\" (the ReplicaSet's hash, then the pod's suffix: not "
    "the pods of another deployment whose name starts NAME-); add a namespace matcher if "
    "another namespace runs pods of the same name. A NAME over 46 characters is matched by "
    "prefix (Kubernetes cuts a pod's generated name at 58 characters, hash included).",
)


def triggers(
    spec: DeploymentSpec, metrics: list[tuple[int, AutoscaleMetric]], left_out: list[LeftOut]
) -> list[dict[str, Any]]:
    """KEDA triggers for `metrics` (`plan` took out queue and a cpu with no request)."""
    out: list[dict[str, Any]] = []
    for i, m in metrics:
        where = f"autoscale.metrics[{i}].target"
        if m.metric in _RESOURCE:
            value = str(percent(m, where, left_out))
            trigger = {"type": m.metric.value, "metricType": "Utilization"}
            out.append({**trigger, "metadata": {"value": value}})
            continue
        query, metric_type = prometheus_query(spec, m)
        metadata = {
            "serverAddress": PROMETHEUS_ADDRESS,
            "query": query,
            "threshold": number(m.target),
        }
        out.append(
            {
                "type": "prometheus",
                "name": f"{m.metric.value.replace('_', '-')}-{i}",
                "metricType": metric_type,
                "metadata": metadata,
            }
        )
    return out


def scaled_object(
    spec: DeploymentSpec, p: Plan, meta: dict[str, Any], left_out: list[LeftOut]
) -> dict[str, Any]:
    """The ScaledObject for a `keda` plan."""
    body: dict[str, Any] = {"scaleTargetRef": {"name": spec.name}}
    if p.min_replicas == 0:
        ttl = spec.replicas.scale_to_zero_after
        body["cooldownPeriod"] = math.ceil((ttl or spec.autoscale.scale_down_delay) - 1e-9)
    body["minReplicaCount"] = p.min_replicas
    body["maxReplicaCount"] = spec.replicas.max
    window = stabilization(spec, left_out)
    behavior = {"scaleDown": {"stabilizationWindowSeconds": window}}
    body["advanced"] = {"horizontalPodAutoscalerConfig": {"behavior": behavior}}
    body["triggers"] = triggers(spec, p.metrics, left_out)
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": meta,
        "spec": body,
    }


def hpa(
    spec: DeploymentSpec, p: Plan, meta: dict[str, Any], left_out: list[LeftOut]
) -> dict[str, Any]:
    """The HorizontalPodAutoscaler for an `hpa` plan (cpu and memory only)."""
    metrics: list[dict[str, Any]] = []
    for i, m in p.metrics:
        average = cpu_average(spec, m)
        if average is not None:
            target: dict[str, Any] = {"type": "AverageValue", "averageValue": average}
        else:
            value = percent(m, f"autoscale.metrics[{i}].target", left_out)
            target = {"type": "Utilization", "averageUtilization": value}
        metrics.append({"type": "Resource", "resource": {"name": m.metric.value, "target": target}})
    body: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": spec.name},
        "minReplicas": p.min_replicas,
        "maxReplicas": spec.replicas.max,
        "metrics": metrics,
        "behavior": {"scaleDown": {"stabilizationWindowSeconds": stabilization(spec, left_out)}},
    }
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": meta,
        "spec": body,
    }
