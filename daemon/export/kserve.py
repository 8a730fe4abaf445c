"""`berth export --to kserve`: a KServe `InferenceService` (serving.kserve.io/v1beta1).

`build(spec, origin)` is pure. The predictor is `kube_pod`'s pod with its container named
`kserve-container` (KServe's name for a custom predictor's container). The mode:
- `Standard` (KServe's name since 0.16 for RawDeployment, kserve#4608: a Deployment
  `NAME-predictor`, a Service, an HPA or KEDA ScaledObject made by KServe) unless
  `replicas.min = 0`;
- `Knative` (the 0.16+ name of the deprecated `Serverless`; needs Knative Serving) for
  `min = 0`, the only mode that scales to zero on requests.
Scaling: Standard mode with only cpu/memory metrics uses KServe's HPA class (`scaleMetric`
/ `scaleTarget` for one cpu utilisation, else `autoScaling.metrics`); any other metric the
KEDA class (`autoScaling.metrics` External prometheus, the same queries as `keda`), where
KServe passes no metricType, so KEDA averages per replica: right for a gauge or
concurrency, wrong for request_duration and the gpu_* averages (left out). Knative mode
scales on concurrency only (KPA); `containerConcurrency` (max_concurrency) is Knative's hard
limit, enforced by its queue-proxy (Standard mode has no such limit). `timeout`
(read_timeout) is carried in both (Knative's revision timeout; the HTTPRoute's).
The PersistentVolumeClaims the pod mounts are exported beside it, as for Kubernetes.

KServe copies the InferenceService's labels and annotations onto the predictor's pods
(components/predictor.go buildObjectMeta; in Knative mode onto the revision template), so
they are the pod template's: the InferenceService carries `berth.io/template-id` only, and
spec-id, revision and deployment-id stay in the files' first comment line (and on the
claims), or each re-export would restart every pod. Knative mode: Knative refuses
`terminationGracePeriodSeconds` (its PodSpec field mask; it sets the revision timeout
there), and its progress deadline (600 s by default) becomes the
`serving.knative.dev/progress-deadline` annotation, at least the startup probe's budget.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from config.spec import (
    ENDPOINT_CLIENT_IDLE_TIMEOUT,
    ENDPOINT_CONNECT_TIMEOUT,
    AutoscaleMetric,
    DeploymentSpec,
    MetricName,
    UpdateStrategy,
    UpstreamProtocol,
)
from daemon.export import keda, kserve_knative, kube_mounts, kube_pod, kube_steps
from daemon.export.bundle import Built, ExportedFile, LeftOut, Origin
from daemon.export.kubernetes import (
    berth_rolls_back,
    claim_file,
    gpu_strategy_left,
    header,
    left_lines,
)
from daemon.export.left_out import endpoint_features
from daemon.export.yaml_text import document

CONTAINER = "kserve-container"


def build(spec: DeploymentSpec, origin: Origin) -> Built:
    knative = spec.replicas.min == 0
    pod = kube_pod.pod(spec, origin, container_name=CONTAINER)
    left: list[LeftOut] = []
    # KServe copies these onto the pods: the template id only (see the module docstring).
    template = kube_pod.TEMPLATE_ID
    isvc_annotations = {template: pod.annotations[template]}
    isvc_annotations["serving.kserve.io/deploymentMode"] = "Knative" if knative else "Standard"
    predictor: dict[str, Any] = {}
    if not spec.enabled:
        isvc_annotations["serving.kserve.io/stop"] = "true"
    _replicas(spec, predictor)
    e = spec.endpoint
    predictor["timeout"] = math.ceil(e.read_timeout - 1e-9)
    if knative:
        kserve_knative.scaling(spec, predictor, isvc_annotations, left)
        kserve_knative.limits(spec, pod, predictor["timeout"], isvc_annotations, left)
    else:
        _standard_scaling(spec, predictor, isvc_annotations, left)
        _standard_update(spec, predictor, left)
    carried: set[str] = set()
    if knative and e.max_concurrency is not None:
        predictor["containerConcurrency"] = e.max_concurrency
        carried.add("endpoint.max_concurrency")
    if (e.connect_timeout, e.client_idle_timeout) == (
        ENDPOINT_CONNECT_TIMEOUT,
        ENDPOINT_CLIENT_IDLE_TIMEOUT,
    ):
        carried.add("endpoint.read_timeout")
    _name_port(spec, pod)
    predictor.update(pod.spec)
    predictor["annotations"] = {
        k: v for k, v in pod.annotations.items() if k.startswith("prometheus.io/")
    }
    if not predictor["annotations"]:
        del predictor["annotations"]
    cold_start = kserve_knative.cold_start_reason(spec, predictor["timeout"]) if knative else None
    left = [
        *endpoint_features(spec, carried=carried, cold_start_reason=cold_start),
        *pod.left_out,
        *left,
    ]
    metadata = kube_pod.metadata(spec, origin, isvc_name(spec))
    metadata["annotations"] = isvc_annotations
    isvc = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": metadata,
        "spec": {"predictor": predictor},
    }
    comments = [header(origin), *pod.comments]
    comments.append(
        "berth.io/spec-id, revision and deployment-id are on the line above, not annotations: "
        "KServe copies the InferenceService's annotations onto its pods, so they would "
        "restart every pod at each re-export; berth.io/template-id changes only when the "
        "containers do"
    )
    comments.append(
        f"endpoint.port {e.port}: KServe's own Service and ingress serve the predictor "
        "(port 80 in the cluster; its URL is in `kubectl get inferenceservice "
        f"{isvc_name(spec)}`)"
    )
    if isvc_name(spec) != spec.name:
        comments.append(_RENAMED.format(name=spec.name, isvc=isvc_name(spec)))
    keda_class = isvc_annotations.get("serving.kserve.io/autoscalerClass") == "keda"
    if keda_class:
        comments.append(
            f"Prometheus queries read the pods of KServe's Deployment {predictor_name(spec)}: "
            f"{keda.pod_matcher(predictor_name(spec))} (the ReplicaSet's hash, then the "
            "pod's suffix)"
        )
    comments += left_lines(left)
    files = [ExportedFile("inferenceservice.yaml", document(isvc, comments=comments))]
    files += [claim_file(spec, origin, c) for c in pod.claims]
    notes = list(pod.notes)
    if isvc_name(spec) != spec.name:
        notes.append(_RENAMED.format(name=spec.name, isvc=isvc_name(spec)))
    if len(predictor_name(spec)) > 63:
        notes.append(
            f"KServe names the predictor's Deployment and Service {predictor_name(spec)!r}, "
            f"over 63 characters: the API server refuses it; rename the InferenceService "
            f"to {63 - len('-predictor')} characters at most"
        )
    notes.append(
        "needs KServe 0.16 or later (the Standard mode's name, kserve#4608)"
        if not knative
        else "needs KServe 0.16 or later (the Knative mode's name, kserve#4608) with "
        "Knative Serving installed"
    )
    if keda_class:
        notes.append("the KEDA autoscaler class needs KEDA installed on the cluster")
        notes.append(
            f"set the Prometheus address in inferenceservice.yaml (a placeholder: "
            f"{keda.PROMETHEUS_ADDRESS})"
        )
    if not spec.enabled:
        notes.append("enabled = false: the InferenceService carries serving.kserve.io/stop")
    steps = kube_steps.apply_steps(pod)
    return Built(tuple(files), tuple(left), tuple(steps), tuple(notes))


_RENAMED = (
    "the InferenceService is named {isvc!r}, not {name!r}: KServe's names must start with a "
    "letter ([a-z]([-a-z0-9]*[a-z0-9])?)"
)


def isvc_name(spec: DeploymentSpec) -> str:
    return kube_mounts.dns1035(spec.name)


def predictor_name(spec: DeploymentSpec) -> str:
    """KServe's name for the predictor's Deployment and its Service in Standard mode
    (constants.PredictorServiceName)."""
    return f"{isvc_name(spec)}-predictor"


def _replicas(spec: DeploymentSpec, predictor: dict[str, Any]) -> None:
    r = spec.replicas
    predictor["minReplicas"] = r.min
    predictor["maxReplicas"] = r.max


def _name_port(spec: DeploymentSpec, pod: kube_pod.Pod) -> None:
    """KServe (and Knative) tell HTTP/2 by the serving port's name: h2c, else http1."""
    h2c = spec.endpoint.upstream_protocol == UpstreamProtocol.H2C
    pod.spec["containers"][0]["ports"][0]["name"] = "h2c" if h2c else "http1"


def _standard_scaling(
    spec: DeploymentSpec,
    predictor: dict[str, Any],
    annotations: dict[str, str],
    left: list[LeftOut],
) -> None:
    # enabled = false is the stop annotation's: the scaling is exported as if enabled.
    plan = keda.plan(replace(spec, enabled=True))
    left += plan.left_out
    if plan.kind is None:
        predictor["minReplicas"] = predictor["maxReplicas"] = plan.min_replicas
        return
    window = keda.stabilization(spec, left)
    behavior = {"scaleDown": {"stabilizationWindowSeconds": window}}
    if plan.kind == "hpa":
        annotations["serving.kserve.io/autoscalerClass"] = "hpa"
        (only, *more) = plan.metrics
        i, m = only
        if not more and m.metric == MetricName.CPU and keda.cpu_average(spec, m) is None:
            predictor["scaleMetric"] = "cpu"
            predictor["scaleTarget"] = keda.percent(m, f"autoscale.metrics[{i}].target", left)
            predictor["autoScaling"] = {"behavior": behavior}
            return
        metrics = [_resource(spec, i, m, left) for i, m in plan.metrics]
    else:
        annotations["serving.kserve.io/autoscalerClass"] = "keda"
        metrics = []
        for i, m in plan.metrics:
            metric = _keda_metric(spec, i, m, left)
            if metric is not None:
                metrics.append(metric)
    predictor["autoScaling"] = {"metrics": metrics, "behavior": behavior}


def _resource(
    spec: DeploymentSpec, i: int, m: AutoscaleMetric, left: list[LeftOut]
) -> dict[str, Any]:
    average = keda.cpu_average(spec, m)
    if average is not None:
        target: dict[str, Any] = {"type": "AverageValue", "averageValue": average}
    else:
        value = keda.percent(m, f"autoscale.metrics[{i}].target", left)
        target = {"type": "Utilization", "averageUtilization": value}
    return {"type": "Resource", "resource": {"name": m.metric.value, "target": target}}


def _keda_metric(
    spec: DeploymentSpec, i: int, m: AutoscaleMetric, left: list[LeftOut]
) -> dict[str, Any] | None:
    where = f"autoscale.metrics[{i}]"
    if m.metric in (MetricName.CPU, MetricName.MEMORY):
        return _resource(spec, i, m, left)
    query, metric_type = keda.prometheus_query(
        spec, m, deployment=predictor_name(spec), service=predictor_name(spec)
    )
    if metric_type != "AverageValue":
        left.append(
            LeftOut(
                where,
                f"{m.metric.value}: KServe hands KEDA no metricType, so KEDA divides the "
                "query by the replica count (AverageValue): an average or a latency "
                "cannot be a target here (use the Kubernetes export's ScaledObject)",
            )
        )
        return None
    metric = {
        "backend": "prometheus",
        "serverAddress": keda.PROMETHEUS_ADDRESS,
        "query": query,
    }
    target = {"type": "Value", "value": keda.number(m.target)}
    return {"type": "External", "external": {"metric": metric, "target": target}}


def _standard_update(spec: DeploymentSpec, predictor: dict[str, Any], left: list[LeftOut]) -> None:
    u = spec.update
    if u.strategy == UpdateStrategy.REPLACE:
        rolling = {"maxSurge": 0, "maxUnavailable": 1}
    else:
        rolling = {"maxSurge": u.max_surge, "maxUnavailable": u.max_unavailable}
    predictor["deploymentStrategy"] = {"type": "RollingUpdate", "rollingUpdate": rolling}
    strategy = gpu_strategy_left(spec, "the predictor's deploymentStrategy.rollingUpdate")
    if strategy is not None:
        left.append(strategy)
    left.append(
        LeftOut(
            "update.progress_deadline",
            f"{berth_rolls_back(spec)}: KServe's predictor has no progress deadline and "
            "nothing rolls a failed revision back: watch `kubectl get inferenceservice` and "
            "apply the old file",
        )
    )
