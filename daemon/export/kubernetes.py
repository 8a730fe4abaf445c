"""`berth export --to kubernetes`: a Deployment, a Service, an HPA or KEDA ScaledObject,
and the PersistentVolumeClaims the pod mounts, one file each.

`build(spec, origin)` is pure: the pod comes from `kube_pod`, the autoscaler from `keda`.
Every file starts with `Exported by berth export from ...` and the LeftOut lines that
concern it; deployment.yaml carries all of them. The Secrets the pod names are not
exported (their values are not in the spec): the apply steps create them first, by name.
"""

from __future__ import annotations

import math
from typing import Any

from config.spec import DeploymentSpec, Update, UpdateStrategy, UpstreamProtocol
from config.units import format_duration
from daemon.export import keda, kube_mounts, kube_pod, kube_steps
from daemon.export.bundle import Built, ExportedFile, LeftOut, Origin
from daemon.export.kube_mounts import dns1035
from daemon.export.left_out import endpoint_features
from daemon.export.yaml_text import document

PVC_SIZE_PLACEHOLDER = "10Gi"


def header(origin: Origin) -> str:
    return f"Exported by berth export from {origin.describe()}"


def build(spec: DeploymentSpec, origin: Origin) -> Built:
    pod = kube_pod.pod(spec, origin)
    plan = keda.plan(spec)
    scaler_left: list[LeftOut] = list(plan.left_out)
    scaler = _scaler(spec, origin, plan, scaler_left)
    update_left = _update_left_out(spec)
    left = [*endpoint_features(spec), *pod.left_out, *update_left, *scaler_left]
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": kube_pod.metadata(spec, origin),
        "spec": deployment_spec(spec, pod, plan.min_replicas),
    }
    comments = [header(origin), *pod.comments, *plan.comments]
    if scaler is not None:
        comments.append(
            f"replicas: {plan.min_replicas} is the autoscaler's floor: applying this file again "
            "resets the count to it until the autoscaler acts (delete the line to avoid that)"
        )
    comments += left_lines(left)
    files = [ExportedFile("deployment.yaml", document(deployment, comments=comments))]
    files.append(_service_file(spec, origin))
    notes = list(pod.notes)
    if dns1035(spec.name) != spec.name:
        notes.append(_renamed_service(spec))
    if scaler is not None:
        name = "hpa.yaml" if plan.kind == "hpa" else "scaledobject.yaml"
        lines = [header(origin), *left_lines(scaler_left)]
        if plan.kind == "keda":
            lines += keda.QUERY_COMMENTS
            notes.append("the ScaledObject needs KEDA (keda.sh) installed on the cluster")
            if any(t["type"] == "prometheus" for t in scaler["spec"]["triggers"]):
                notes.append(
                    f"set the Prometheus address in scaledobject.yaml (a placeholder: "
                    f"{keda.PROMETHEUS_ADDRESS})"
                )
        files.append(ExportedFile(name, document(scaler, comments=lines)))
    for claim in pod.claims:
        files.append(claim_file(spec, origin, claim))
    steps = kube_steps.apply_steps(pod)
    if not spec.enabled:
        notes.append("enabled = false: the Deployment has replicas: 0 and no autoscaler")
    return Built(
        files=tuple(files),
        left_out=tuple(left),
        apply_steps=tuple(steps),
        notes=tuple(notes),
    )


def left_lines(left: list[LeftOut]) -> list[str]:
    if not left:
        return []
    return ["Not carried (see README.md):", *(f"- {item.line()}" for item in left)]


def deployment_spec(spec: DeploymentSpec, pod: kube_pod.Pod, replicas: int) -> dict[str, Any]:
    u = spec.update
    if u.strategy == UpdateStrategy.REPLACE:
        rolling = {"maxSurge": 0, "maxUnavailable": 1}
    else:
        rolling = {"maxSurge": u.max_surge, "maxUnavailable": u.max_unavailable}
    return {
        "replicas": replicas,
        "selector": {"matchLabels": {"app.kubernetes.io/name": spec.name}},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": rolling},
        "progressDeadlineSeconds": math.ceil(u.progress_deadline - 1e-9),
        "template": {
            "metadata": {"labels": pod.labels, "annotations": pod.annotations},
            "spec": pod.spec,
        },
    }


def berth_rolls_back(spec: DeploymentSpec) -> str:
    """'berth rolls back a rollout with no progress for 10m by default', for the reasons."""
    deadline = spec.update.progress_deadline
    default = " by default" if deadline == Update().progress_deadline else ""
    return f"berth rolls back a rollout with no progress for {format_duration(deadline)}{default}"


def _update_left_out(spec: DeploymentSpec) -> list[LeftOut]:
    name = spec.name
    out = [
        LeftOut(
            "update.progress_deadline",
            f"{berth_rolls_back(spec)}: Kubernetes marks such a rollout failed "
            f"(progressDeadlineSeconds) but does not roll it back: `kubectl rollout undo "
            f"deployment/{name}`",
        )
    ]
    strategy = gpu_strategy_left(spec, "the Deployment's strategy.rollingUpdate")
    if strategy is not None:
        out.append(strategy)
    return out


def gpu_strategy_left(spec: DeploymentSpec, where: str) -> LeftOut | None:
    """With GPUs and no update.strategy, berth surges and falls back to replace when no
    GPU is free; a rolling update's surge pod waits Pending instead."""
    gpus = spec.resources.gpus or spec.resources.gpu_memory is not None
    if spec.update.strategy is not None or not gpus:
        return None
    return LeftOut(
        "update.strategy",
        "unset: berth surges and falls back to replacing in place when no GPU is free; a "
        "rolling update's surge pod waits Pending instead: to replace in place, write "
        f'maxSurge: 0 and maxUnavailable: 1 in {where} (update.strategy = "replace" '
        "exports to that)",
    )


def _scaler(
    spec: DeploymentSpec, origin: Origin, plan: keda.Plan, left: list[LeftOut]
) -> dict[str, Any] | None:
    meta = kube_pod.metadata(spec, origin)
    if plan.kind == "hpa":
        return keda.hpa(spec, plan, meta, left)
    if plan.kind == "keda":
        return keda.scaled_object(spec, plan, meta, left)
    return None


def _service_file(spec: DeploymentSpec, origin: Origin) -> ExportedFile:
    port: dict[str, Any] = {
        "name": "http",
        "port": spec.endpoint.port,
        "targetPort": spec.port,
        "protocol": "TCP",
    }
    if spec.endpoint.upstream_protocol == UpstreamProtocol.H2C:
        port["appProtocol"] = "kubernetes.io/h2c"
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": kube_pod.metadata(spec, origin, dns1035(spec.name)),
        "spec": {
            "type": "ClusterIP",
            "selector": {"app.kubernetes.io/name": spec.name},
            "ports": [port],
        },
    }
    comments = [
        header(origin),
        f"endpoint.port {spec.endpoint.port} -> the app's port {spec.port}, inside the "
        f"cluster only (berth bound {spec.endpoint.bind}): expose it with an Ingress, a "
        "Gateway or a LoadBalancer Service of your own",
    ]
    if dns1035(spec.name) != spec.name:
        comments.append(_renamed_service(spec))
    return ExportedFile("service.yaml", document(service, comments=comments))


def _renamed_service(spec: DeploymentSpec) -> str:
    return (
        f"the Service is named {dns1035(spec.name)!r}, not {spec.name!r}: a Service's name "
        "must start with a letter (DNS-1035); the Deployment keeps its name"
    )


def claim_file(spec: DeploymentSpec, origin: Origin, claim: kube_mounts.Claim) -> ExportedFile:
    metadata = kube_pod.metadata(spec, origin, claim.name)
    if claim.shared:  # every export's: one deployment's labels and origin are not its own
        metadata = {"name": claim.name, "labels": {"app.kubernetes.io/part-of": kube_pod.PART_OF}}
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata,
        "spec": {
            "accessModes": [claim.access_mode],
            "resources": {"requests": {"storage": PVC_SIZE_PLACEHOLDER}},
        },
    }
    comments = [
        header(origin),
        *claim.comments,
        f"storage {PVC_SIZE_PLACEHOLDER} is a placeholder: set the size you need",
    ]
    return ExportedFile(f"pvc-{claim.name}.yaml", document(pvc, comments=comments))
