"""KServe's Knative mode (`replicas.min = 0`): scaling annotations and what Knative refuses.

`scaling` maps the one metric Knative's autoscaler (KPA, the one that scales to zero) has
for berth, concurrency (`scaleMetric`/`scaleTarget`), and the scale-down timings as
`autoscaling.knative.dev/*` annotations (KServe copies the InferenceService's annotations
onto the revision template, where Knative reads them).

`limits` fits the pod to Knative Serving's PodSpec (knative/serving pkg/apis/serving
fieldmask.go, validation):
- `terminationGracePeriodSeconds` is refused ("must not set the field(s)"): Knative sets
  it to the revision timeout (KServe's `timeout`), and its queue-proxy drains a leaving pod
  within it; drain_timeout + stop_timeout is not used (LeftOut).
- one container port: the scrape ports are not declared (the pod still listens on them);
- probes on the serving port only;
- the progress deadline (config-deployment `progress-deadline`, 600 s by default) is the
  `serving.knative.dev/progress-deadline` annotation: `update.progress_deadline`, raised to
  the startup probe's budget when that is longer (a revision not ready by then fails);
- a `timeout` over 600 s needs config-defaults' `max-revision-timeout-seconds` raised;
- hostPath, claims and init containers need Knative feature flags (a note).
"""

from __future__ import annotations

import math
from typing import Any, Final

from config.spec import DeploymentSpec, MetricName, MountType, Update
from config.units import format_duration
from daemon.export.bundle import LeftOut
from daemon.export.kube_pod import Pod, berth_drains, whole_seconds

MAX_SCALE_DOWN_DELAY: Final = 3600  # Knative's WindowMax: scale-down-delay, pod retention period
MAX_TIMEOUT: Final = 600  # Knative's default max-revision-timeout-seconds (config-defaults)
PROGRESS_DEADLINE: Final = "serving.knative.dev/progress-deadline"
STOP_TIMEOUT_DEFAULT: Final = DeploymentSpec.__dataclass_fields__["stop_timeout"].default


def scaling(
    spec: DeploymentSpec,
    predictor: dict[str, Any],
    annotations: dict[str, str],
    left: list[LeftOut],
) -> None:
    for i, m in enumerate(spec.autoscale.metrics):
        if m.metric == MetricName.CONCURRENCY and "scaleMetric" not in predictor:
            predictor["scaleMetric"] = "concurrency"
            predictor["scaleTarget"] = max(1, math.ceil(m.target - 1e-9))
            if predictor["scaleTarget"] != m.target:
                left.append(
                    LeftOut(f"autoscale.metrics[{i}].target", "rounded up to a whole request")
                )
            continue
        left.append(
            LeftOut(
                f"autoscale.metrics[{i}]",
                f"{m.metric.value}: Knative's autoscaler (KPA, the one that scales to zero) "
                "scales on concurrency or requests per second only",
            )
        )
    delay = math.ceil(spec.autoscale.scale_down_delay - 1e-9)
    if delay > MAX_SCALE_DOWN_DELAY:
        left.append(
            LeftOut(
                "autoscale.scale_down_delay",
                f"cut to {MAX_SCALE_DOWN_DELAY}s, Knative's longest scale-down-delay",
            )
        )
        delay = MAX_SCALE_DOWN_DELAY
    annotations["autoscaling.knative.dev/scale-down-delay"] = f"{delay}s"
    ttl = spec.replicas.scale_to_zero_after
    if ttl is not None:
        retention = math.ceil(ttl - 1e-9)
        if retention > MAX_SCALE_DOWN_DELAY:  # Knative's WindowMax bounds both
            left.append(
                LeftOut(
                    "replicas.scale_to_zero_after",
                    f"cut to {MAX_SCALE_DOWN_DELAY}s, Knative's longest "
                    "scale-to-zero-pod-retention-period",
                )
            )
            retention = MAX_SCALE_DOWN_DELAY
        key = "autoscaling.knative.dev/scale-to-zero-pod-retention-period"
        annotations[key] = f"{retention}s"


def limits(
    spec: DeploymentSpec,
    pod: Pod,
    timeout: int,
    annotations: dict[str, str],
    left: list[LeftOut],
) -> None:
    """What Knative Serving refuses, sets itself, or needs a feature flag for."""
    _grace(spec, pod, timeout)
    _progress_deadline(spec, annotations, left)
    if timeout > MAX_TIMEOUT:
        pod.notes.append(
            f"timeout {timeout}s (endpoint.read_timeout) is over Knative's default "
            f"max-revision-timeout-seconds ({MAX_TIMEOUT}): raise that key in the "
            "knative-serving namespace's config-defaults ConfigMap (and the activator's "
            "terminationGracePeriodSeconds), or Knative refuses the revision"
        )
    _one_port(pod)
    for kind in ("startup", "readiness", "liveness"):
        probe = getattr(spec.health, kind)
        if probe is not None and probe.port != spec.port:
            left.append(
                LeftOut(
                    f"health.{kind}.port",
                    f"{probe.port}: Knative probes only the serving port ({spec.port})",
                )
            )
    _feature_flags(spec, pod)
    u, default = spec.update, Update()
    set_fields = [
        f"update.{name}"
        for name in ("max_surge", "max_unavailable", "strategy")
        if getattr(u, name) != getattr(default, name)
    ]
    for field_path in set_fields:
        left.append(
            LeftOut(
                field_path,
                "Knative starts a new revision beside the old one and moves all traffic to "
                "it once it is ready: no surge, unavailability or strategy to set",
            )
        )


def cold_start_reason(spec: DeploymentSpec, timeout: int) -> str:
    """Knative's activator does hold requests while a pod starts, bounded otherwise."""
    return (
        f"berth holds a request up to {spec.endpoint.cold_start_timeout:g}s while a replica "
        "starts; Knative's activator holds it too (scale from zero), but for as long as the "
        f"revision timeout ({timeout}s, endpoint.read_timeout) allows, not a time of its own"
    )


def _grace(spec: DeploymentSpec, pod: Pod, timeout: int) -> None:
    grace = pod.spec.pop("terminationGracePeriodSeconds")
    pod.left_out[:] = [item for item in pod.left_out if item.field != "update.drain_timeout"]
    knative = (
        "Knative refuses terminationGracePeriodSeconds and sets it to the revision timeout "
        f"({timeout}s), within which its queue-proxy lets a leaving pod's requests finish"
    )
    if spec.update.drain_timeout > 0:
        pod.left_out.append(
            LeftOut(
                "update.drain_timeout",
                f"{berth_drains(spec)} before SIGTERM; {knative}; drain_timeout + "
                f"stop_timeout ({grace}s) is not used",
            )
        )
    if spec.stop_timeout != STOP_TIMEOUT_DEFAULT:
        pod.left_out.append(
            LeftOut(
                "stop_timeout",
                f"{format_duration(spec.stop_timeout)}: {knative}, so SIGKILL comes up to "
                f"{timeout}s after SIGTERM",
            )
        )


def _progress_deadline(
    spec: DeploymentSpec, annotations: dict[str, str], left: list[LeftOut]
) -> None:
    deadline = whole_seconds(spec.update.progress_deadline, least=1)
    startup = spec.health.startup
    budget = whole_seconds(startup.budget) if startup is not None else 0
    if budget > deadline:
        left.append(
            LeftOut(
                "update.progress_deadline",
                f"{format_duration(spec.update.progress_deadline)} is raised to {budget}s, "
                "the startup probe's budget: Knative fails a revision that is not ready by "
                f"its {PROGRESS_DEADLINE} and keeps the traffic on the last ready one "
                "(berth would roll back at its own deadline, before the probe gives up)",
            )
        )
        deadline = budget
    annotations[PROGRESS_DEADLINE] = f"{deadline}s"


def _one_port(pod: Pod) -> None:
    container = pod.spec["containers"][0]
    extra = [str(p["containerPort"]) for p in container["ports"][1:]]
    if not extra:
        return
    container["ports"] = container["ports"][:1]
    for i, item in enumerate(pod.left_out):
        if item.field == "metrics.scrape":
            reason = (
                f"{item.reason}; a Knative service declares one container port, so port(s) "
                f"{', '.join(extra)} are not declared: the pod still listens there (the "
                "prometheus.io/port annotation, or a PodMonitor by port number, reaches it)"
            )
            pod.left_out[i] = LeftOut(item.field, reason)


def _feature_flags(spec: DeploymentSpec, pod: Pod) -> None:
    flags = []
    volumes = pod.spec.get("volumes", [])
    if any("hostPath" in v for v in volumes):
        flags.append("kubernetes.podspec-hostpath")
    if any("persistentVolumeClaim" in v for v in volumes):
        flags.append("kubernetes.podspec-persistent-volume-claim")
        # git and model mounts are read-only whatever read_only says; only a volume writes
        if any(m.type == MountType.VOLUME and not m.read_only for m in spec.mounts):
            flags.append("kubernetes.podspec-persistent-volume-write")
    if "initContainers" in pod.spec:
        flags.append("kubernetes.podspec-init-containers")
    if flags:
        pod.notes.append(
            "Knative Serving must enable these features (config-features): " + ", ".join(flags)
        )
