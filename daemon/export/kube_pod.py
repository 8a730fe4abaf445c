"""The pod that Kubernetes and KServe exports share: container, probes, volumes, metadata.

`pod(spec, origin)` turns the container half of a spec (image, command, env, resources,
probes, mounts, registry, stop and drain timeouts, scrape ports) into a `Pod`: the pod spec
(`containers`, `initContainers`, `volumes`, `imagePullSecrets`,
`terminationGracePeriodSeconds`), the pod template's metadata (labels; the annotation
`berth.io/template-id`, config.canonical's id of what shapes the containers, which changes
only when berth would replace replicas: the objects themselves carry spec-id, revision and
deployment-id, so a berth-only change such as max_concurrency restarts no pod), the
PersistentVolumeClaims and Secrets the pod refers to (made by `kubernetes` and named in
the apply steps), and the fields that did not carry (`LeftOut`). Values of secrets never
appear: only their names. The volumes, mounts, init containers and Secrets are
`kube_mounts`'.

Rules (docs/export.md has the table): `command` is the image's CMD, so it maps to `args`;
durations become whole seconds rounded up (a LeftOut names each value that changed); a
startup probe's `timeout_total` becomes the failureThreshold that gives at least that
budget; `/dev/shm` is a memory emptyDir; resources are requests = limits; `gpu_memory` (a
share of a GPU's VRAM) is one whole GPU; every `$` in args and env values is written `$$`
(Kubernetes would expand `$(VAR)`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Final

from config.canonical import template_id
from config.image_ref import parse_image_ref
from config.secret_ref import SecretRef
from config.spec import (
    DeploymentSpec,
    IpcMode,
    Probe,
    PullPolicy,
    Update,
)
from config.units import format_duration
from daemon.export.bundle import LeftOut, Origin
from daemon.export.kube_mounts import (
    SECRET_KEY,
    PodNeeds,
    byte_quantity,
    generic_secret,
    literal,
    volumes,
)
from daemon.export.kube_steps import registry_secret

PART_OF: Final = "berth-export"
TEMPLATE_ID: Final = "berth.io/template-id"
_PULL = {
    PullPolicy.MISSING: "IfNotPresent",
    PullPolicy.ALWAYS: "Always",
    PullPolicy.NEVER: "Never",
}


@dataclass
class Pod(PodNeeds):
    spec: dict[str, Any] = field(default_factory=dict)  # a PodSpec: containers, volumes, ...
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)


def object_labels(spec: DeploymentSpec) -> dict[str, str]:
    return {"app.kubernetes.io/name": spec.name, "app.kubernetes.io/part-of": PART_OF}


def object_annotations(origin: Origin) -> dict[str, str]:
    """The objects' own annotations (never the pod template's: a change restarts pods)."""
    out = {"berth.io/spec-id": origin.spec_id}
    if origin.deployment_id is not None:
        out["berth.io/deployment-id"] = origin.deployment_id
    if origin.revision is not None:
        out["berth.io/revision"] = str(origin.revision)
    return out


def metadata(spec: DeploymentSpec, origin: Origin, name: str | None = None) -> dict[str, Any]:
    """An object's metadata: its name (the deployment's by default), labels, annotations."""
    return {
        "name": name or spec.name,
        "labels": object_labels(spec),
        "annotations": object_annotations(origin),
    }


def whole_seconds(seconds: float, *, least: int = 0) -> int:
    return max(least, math.ceil(seconds - 1e-9))


def cpu_quantity(cpus: float) -> str:
    millis = max(1, round(cpus * 1000))
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def pod(spec: DeploymentSpec, origin: Origin, *, container_name: str | None = None) -> Pod:
    """The pod for `spec`: see the module docstring."""
    annotations = {TEMPLATE_ID: template_id(spec)}
    out = Pod(spec={}, labels=object_labels(spec), annotations=annotations)
    container: dict[str, Any] = {"name": container_name or spec.name, "image": spec.image}
    container["imagePullPolicy"] = _PULL[spec.pull]
    if spec.command is not None:
        container["args"] = [literal(a) for a in spec.command]
    texts = [*(spec.command or ()), *(v for v in spec.env.values() if isinstance(v, str))]
    if any("$" in text for text in texts):
        out.comments.append(
            "every $ in args and env values is written $$: Kubernetes reduces $$ to $ (and "
            "would expand $(VAR)), so the container gets the text as berth passed it"
        )
    container["ports"] = _ports(spec, out)
    env = _env(spec, out)
    if env:
        container["env"] = env
    resources = _resources(spec, out)
    if resources:
        container["resources"] = resources
    pod_volumes, mounts, init = volumes(spec, out)
    if mounts:
        container["volumeMounts"] = mounts
    for kind in ("startup", "readiness", "liveness"):
        probe = getattr(spec.health, kind)
        if probe is not None:
            container[f"{kind}Probe"] = _probe(probe, kind, out)
    if init:
        out.spec["initContainers"] = init
    out.spec["containers"] = [container]
    if pod_volumes:
        out.spec["volumes"] = pod_volumes
    if spec.registry is not None:
        out.spec["imagePullSecrets"] = [{"name": registry_secret(spec, out)}]
    grace = spec.update.drain_timeout + spec.stop_timeout
    out.spec["terminationGracePeriodSeconds"] = whole_seconds(grace)
    if spec.update.drain_timeout > 0:
        out.left_out.append(
            LeftOut(
                "update.drain_timeout",
                f"{berth_drains(spec)} before SIGTERM; here a leaving pod gets SIGTERM as it "
                "leaves the Service's endpoints, with no drain first: "
                "terminationGracePeriodSeconds is drain_timeout + stop_timeout, so a server "
                "that finishes its requests on SIGTERM keeps them",
            )
        )
    _image_note(spec, out)
    return out


def berth_drains(spec: DeploymentSpec) -> str:
    """'berth drains for 30s by default' (or 'berth drains for 2m'), for the reasons."""
    drain = spec.update.drain_timeout
    default = " by default" if drain == Update().drain_timeout else ""
    return f"berth drains a leaving replica for {format_duration(drain)}{default}"


def _ports(spec: DeploymentSpec, out: Pod) -> list[dict[str, Any]]:
    ports: list[dict[str, Any]] = [{"name": "http", "containerPort": spec.port, "protocol": "TCP"}]
    seen = {spec.port}
    scrape = spec.metrics.scrape
    for i, s in enumerate(scrape):
        if s.port not in seen:
            seen.add(s.port)
            ports.append({"name": f"metrics-{i}", "containerPort": s.port, "protocol": "TCP"})
    if scrape:
        first = scrape[0]
        out.annotations["prometheus.io/scrape"] = "true"
        out.annotations["prometheus.io/port"] = str(first.port)
        out.annotations["prometheus.io/path"] = first.path
        for i in range(1, len(scrape)):
            out.left_out.append(
                LeftOut(
                    f"metrics.scrape[{i}]",
                    "the prometheus.io/* pod annotations name one endpoint (the first); "
                    f"scrape port {scrape[i].port} {scrape[i].path} with a PodMonitor",
                )
            )
        out.left_out.append(
            LeftOut(
                "metrics.scrape",
                "berthd scraped the replicas itself; here your Prometheus must (the "
                "prometheus.io/* annotations, or a PodMonitor) at its own interval",
            )
        )
    return ports


def _env(spec: DeploymentSpec, out: Pod) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = []
    for name in sorted(spec.env):
        value = spec.env[name]
        if isinstance(value, SecretRef):
            secret = generic_secret(value, f"env.{name}.secret", out)
            ref = {"secretKeyRef": {"name": secret, "key": SECRET_KEY}}
            env.append({"name": name, "valueFrom": ref})
        else:
            env.append({"name": name, "value": literal(value)})
    return env


def _resources(spec: DeploymentSpec, out: Pod) -> dict[str, Any]:
    r = spec.resources
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if r.cpus is not None:
        requests["cpu"] = limits["cpu"] = cpu_quantity(r.cpus)
        if abs(r.cpus * 1000 - round(r.cpus * 1000)) > 1e-6:
            out.left_out.append(
                LeftOut("resources.cpus", f"{r.cpus} rounded to {cpu_quantity(r.cpus)} CPU")
            )
    if r.memory is not None:
        requests["memory"] = limits["memory"] = byte_quantity(r.memory)
    if r.gpus:
        limits["nvidia.com/gpu"] = r.gpus
    elif r.gpu_memory is not None:
        limits["nvidia.com/gpu"] = 1  # a VRAM share is a whole GPU here (left_out.py says so)
    if r.ipc == IpcMode.SHAREABLE:
        out.left_out.append(
            LeftOut(
                "resources.ipc",
                "shareable: a pod's containers share IPC already; no other pod can join it",
            )
        )
    if r.ulimits:
        names = ", ".join(sorted(r.ulimits))
        out.left_out.append(
            LeftOut(
                "resources.ulimits",
                f"{names}: Kubernetes sets no per-pod rlimits; the node's container "
                "runtime defaults apply (set them in its config, e.g. containerd's)",
            )
        )
    resources: dict[str, Any] = {}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    return resources


_HEADER_NAME = re.compile(r"[-A-Za-z0-9]+")  # Kubernetes' check of an httpHeaders name


def _probe(p: Probe, kind: str, out: Pod) -> dict[str, Any]:
    probe: dict[str, Any] = {}
    if p.tcp:
        probe["tcpSocket"] = {"port": p.port}
    else:
        get: dict[str, Any] = {"path": p.path, "port": p.port}
        headers = []
        for k in sorted(p.headers):
            if _HEADER_NAME.fullmatch(k):
                headers.append({"name": k, "value": p.headers[k]})
            else:  # berth allows `_` and `.` in a header name; Kubernetes refuses them
                reason = "Kubernetes takes probe header names of letters, digits and '-' only"
                out.left_out.append(LeftOut(f"health.{kind}.headers.{k}", reason))
        if headers:
            get["httpHeaders"] = headers
        probe["httpGet"] = get
    initial = _seconds(p.initial_delay, f"health.{kind}.initial_delay", 0, out)
    period = _seconds(p.period, f"health.{kind}.period", 1, out)
    probe["initialDelaySeconds"] = initial
    probe["periodSeconds"] = period
    probe["timeoutSeconds"] = _seconds(p.timeout, f"health.{kind}.timeout", 1, out)
    probe["successThreshold"] = p.success_threshold
    failures = p.failure_threshold
    if p.timeout_total is not None:
        failures = max(failures, math.ceil((p.timeout_total - initial) / period - 1e-9))
        out.comments.append(
            f"health.startup.timeout_total {format_duration(p.timeout_total)}: failureThreshold "
            f"{failures} "
            f"x periodSeconds {period} after initialDelaySeconds {initial}"
        )
    probe["failureThreshold"] = failures
    return probe


def _seconds(value: float, field_path: str, least: int, out: Pod) -> int:
    whole = whole_seconds(value, least=least)
    if whole != value:
        out.left_out.append(
            LeftOut(
                field_path,
                f"{format_duration(value)} becomes {whole}s: Kubernetes counts whole seconds",
            )
        )
    return whole


def _image_note(spec: DeploymentSpec, out: Pod) -> None:
    try:
        domain = parse_image_ref(spec.image).domain
    except ValueError:
        return
    if domain == "localhost":
        out.notes.append(
            f"image {spec.image} was built on the berth host: push it to a registry your "
            "cluster pulls from and change the image in the manifests"
        )
    elif domain is None:
        out.notes.append(
            f"image {spec.image} is a short name: Podman resolved it by registries.conf; "
            "the cluster's runtime may not (write it in full, e.g. docker.io/...)"
        )
    if spec.resources.gpus or spec.resources.gpu_memory is not None:
        out.notes.append(
            "nvidia.com/gpu limits need the NVIDIA device plugin (or GPU operator) on the "
            "cluster's GPU nodes"
        )
