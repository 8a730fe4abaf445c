"""The pod that Kubernetes and KServe exports share: container, probes, volumes, metadata.

`pod(spec, origin)` turns the container half of a spec (image, command, env, resources,
probes, mounts, registry, stop and drain timeouts, scrape ports) into a `Pod`: the pod spec
(`containers`, `initContainers`, `volumes`, `imagePullSecrets`,
`terminationGracePeriodSeconds`), the pod template's metadata, the PersistentVolumeClaims
and Secrets the pod refers to (made by `kubernetes` and named in the apply steps), and the
fields that did not carry (`LeftOut`). Values of secrets never appear: only their names.

Rules (docs/export.md has the table): `command` is the image's CMD, so it maps to `args`;
durations become whole seconds rounded up (a LeftOut names each value that changed); a
startup probe's `timeout_total` becomes the failureThreshold that gives at least that
budget; `/dev/shm` is a memory emptyDir; resources are requests = limits.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Final

from config.image_ref import parse_image_ref
from config.secret_ref import SecretRef
from config.spec import (
    DeploymentSpec,
    IpcMode,
    Mount,
    MountType,
    Probe,
    PullPolicy,
)
from config.units import format_duration
from daemon.export.bundle import LeftOut, Origin

PART_OF: Final = "berth-export"
GIT_IMAGE: Final = "docker.io/alpine/git:2.47.2"
MODELS_CLAIM: Final = "berth-models"
GIT_CREDENTIALS_DIR: Final = "/berth/git-credentials"
SECRET_KEY: Final = "value"  # the key of each generic Secret the export refers to
_PULL = {
    PullPolicy.MISSING: "IfNotPresent",
    PullPolicy.ALWAYS: "Always",
    PullPolicy.NEVER: "Never",
}
_BINARY = (("Ei", 2**60), ("Pi", 2**50), ("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10))
_NOT_DNS = re.compile(r"[^a-z0-9.-]")


@dataclass(frozen=True)
class Claim:
    """A PersistentVolumeClaim the pod mounts (made by the Kubernetes export)."""

    name: str
    access_mode: str  # ReadWriteOnce / ReadWriteMany
    comments: tuple[str, ...] = ()


@dataclass(frozen=True)
class SecretNeeded:
    """A Secret the pod refers to by name, and the kubectl line that creates it."""

    name: str
    create: str


@dataclass
class Pod:
    spec: dict[str, Any]  # a PodSpec: containers, initContainers, volumes, ...
    labels: dict[str, str]
    annotations: dict[str, str]
    claims: list[Claim] = field(default_factory=list)
    secrets: list[SecretNeeded] = field(default_factory=list)
    left_out: list[LeftOut] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)  # for the workload's file


def object_labels(spec: DeploymentSpec) -> dict[str, str]:
    return {"app.kubernetes.io/name": spec.name, "app.kubernetes.io/part-of": PART_OF}


def object_annotations(origin: Origin) -> dict[str, str]:
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


def kube_name(name: str) -> str:
    """A berth name (secret, volume) as a Kubernetes object name (DNS-1123 subdomain)."""
    out = _NOT_DNS.sub("-", name.lower()).strip("-.")
    return out[:253] or "x"


def whole_seconds(seconds: float, *, least: int = 0) -> int:
    return max(least, math.ceil(seconds - 1e-9))


def cpu_quantity(cpus: float) -> str:
    millis = max(1, round(cpus * 1000))
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def byte_quantity(n: int) -> str:
    """Bytes as the largest exact binary unit ("64Mi"), else plain bytes."""
    for suffix, unit in _BINARY:
        if n >= unit and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


def pod(spec: DeploymentSpec, origin: Origin, *, container_name: str | None = None) -> Pod:
    """The pod for `spec`: see the module docstring."""
    out = Pod(spec={}, labels=object_labels(spec), annotations=object_annotations(origin))
    container: dict[str, Any] = {"name": container_name or spec.name, "image": spec.image}
    container["imagePullPolicy"] = _PULL[spec.pull]
    if spec.command is not None:
        container["args"] = list(spec.command)
    container["ports"] = _ports(spec, out)
    env = _env(spec, out)
    if env:
        container["env"] = env
    resources = _resources(spec, out)
    if resources:
        container["resources"] = resources
    volumes, mounts, init = _volumes(spec, out)
    if mounts:
        container["volumeMounts"] = mounts
    for kind in ("startup", "readiness", "liveness"):
        probe = getattr(spec.health, kind)
        if probe is not None:
            container[f"{kind}Probe"] = _probe(probe, kind, out)
    if init:
        out.spec["initContainers"] = init
    out.spec["containers"] = [container]
    if volumes:
        out.spec["volumes"] = volumes
    if spec.registry is not None:
        out.spec["imagePullSecrets"] = [{"name": _registry_secret(spec, out)}]
    grace = spec.update.drain_timeout + spec.stop_timeout
    out.spec["terminationGracePeriodSeconds"] = whole_seconds(grace)
    if spec.update.drain_timeout > 0:
        out.left_out.append(
            LeftOut(
                "update.drain_timeout",
                "no drain before SIGTERM: a leaving pod gets SIGTERM as it leaves the "
                "Service's endpoints; terminationGracePeriodSeconds is drain_timeout + "
                "stop_timeout, so a server that finishes its requests on SIGTERM keeps them",
            )
        )
    _image_note(spec, out)
    return out


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
            secret = _generic_secret(value, f"env.{name}.secret", out)
            ref = {"secretKeyRef": {"name": secret, "key": SECRET_KEY}}
            env.append({"name": name, "valueFrom": ref})
        else:
            env.append({"name": name, "value": value})
    return env


def _generic_secret(ref: SecretRef, field_path: str, out: Pod) -> str:
    name = kube_name(ref.name)
    if name != ref.name:
        out.comments.append(f"{field_path}: berth's secret {ref.name!r} is Secret {name!r} here")
    create = (
        f"kubectl create secret generic {name} --from-file={SECRET_KEY}=PATH"
        f"  # PATH: a file holding berth secret {ref.name}'s value"
    )
    _add_secret(out, SecretNeeded(name, create))
    return name


def _add_secret(out: Pod, secret: SecretNeeded) -> None:
    if all(s.name != secret.name for s in out.secrets):
        out.secrets.append(secret)


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


def _probe(p: Probe, kind: str, out: Pod) -> dict[str, Any]:
    probe: dict[str, Any] = {}
    if p.tcp:
        probe["tcpSocket"] = {"port": p.port}
    else:
        get: dict[str, Any] = {"path": p.path, "port": p.port}
        if p.headers:
            get["httpHeaders"] = [{"name": k, "value": p.headers[k]} for k in sorted(p.headers)]
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


def _volumes(
    spec: DeploymentSpec, out: Pod
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    init: list[dict[str, Any]] = []
    shm = spec.resources.shm_size
    if shm is not None:
        volumes.append(
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": byte_quantity(shm)}}
        )
        mounts.append({"name": "shm", "mountPath": "/dev/shm"})
    claims_by_volume: dict[str, str] = {}
    for i, m in enumerate(spec.mounts):
        name = f"{m.type.value}-{i}"
        mount: dict[str, Any] = {"name": name, "mountPath": m.target}
        if m.read_only:
            mount["readOnly"] = True
        if m.type == MountType.VOLUME:
            claim = _claim(spec, m, i, out, claims_by_volume)
            volumes.append({"name": name, "persistentVolumeClaim": {"claimName": claim}})
        elif m.type == MountType.BIND:
            volumes.append({"name": name, "hostPath": {"path": m.source, "type": "Directory"}})
            out.comments.append(
                f"mounts[{i}]: bind {m.source} is a hostPath: that directory must exist on "
                "every node that may run the pod (or use a PersistentVolume instead)"
            )
        elif m.type == MountType.MODEL:
            volumes.append({"name": name, "persistentVolumeClaim": {"claimName": MODELS_CLAIM}})
            mount["subPath"] = m.source
            _models_claim(spec, out)
        else:
            volumes.append({"name": name, "emptyDir": {}})
            init.append(_git_init(spec, m, i, name, volumes, out))
        mounts.append(mount)
    return volumes, mounts, init


def _access_mode(spec: DeploymentSpec) -> str:
    return "ReadWriteOnce" if max(spec.replicas.max, 1) == 1 else "ReadWriteMany"


def _claim(spec: DeploymentSpec, m: Mount, i: int, out: Pod, seen: dict[str, str]) -> str:
    if m.source in seen:
        return seen[m.source]
    name = kube_name(m.source)
    seen[m.source] = name
    comments = [f"mounts[{i}]: Podman volume {m.source!r}"]
    if name != m.source:
        comments.append(f"renamed {name!r}: a Kubernetes name is lower-case, no '_'")
    access = _access_mode(spec)
    if access == "ReadWriteMany":
        comments.append(
            "ReadWriteMany: replicas.max > 1 and every replica mounts it (berth's replicas "
            "share one Podman volume); your storage class must offer it"
        )
    out.claims.append(Claim(name, access, tuple(comments)))
    out.notes.append(
        f"PersistentVolumeClaim {name}: its size is a 10Gi placeholder; set "
        "spec.resources.requests.storage (and a storageClassName) before applying"
    )
    return name


def _models_claim(spec: DeploymentSpec, out: Pod) -> None:
    if any(c.name == MODELS_CLAIM for c in out.claims):
        return
    comments = (
        'berth\'s model store (<state_dir>/models on the berth host), for `type = "model"` '
        "mounts: copy each model's directory into this volume at its name",
    )
    out.claims.append(Claim(MODELS_CLAIM, _access_mode(spec), comments))
    out.notes.append(
        f"PersistentVolumeClaim {MODELS_CLAIM}: copy <state_dir>/models/SOURCE from the "
        "berth host into it (each model mount reads subPath SOURCE); its size is a 10Gi "
        "placeholder to set"
    )


def _git_init(
    spec: DeploymentSpec,
    m: Mount,
    i: int,
    volume: str,
    volumes: list[dict[str, Any]],
    out: Pod,
) -> dict[str, Any]:
    checkout = f"/berth/git-{i}"
    ssh = m.source.startswith("ssh://") or ("://" not in m.source and "@" in m.source)
    secret: str | None = None
    if m.credentials is not None:
        secret = _generic_secret(m.credentials, f"mounts[{i}].credentials.secret", out)
    elif m.credentials_file is not None:
        secret = f"{spec.name}-git-{i}"
        _add_secret(
            out,
            SecretNeeded(
                secret,
                f"kubectl create secret generic {secret} "
                f"--from-file={SECRET_KEY}={m.credentials_file}",
            ),
        )
    container: dict[str, Any] = {
        "name": f"git-{i}",
        "image": GIT_IMAGE,
        "command": ["/bin/sh", "-c", _GIT_SCRIPT, "git-clone", m.source, m.ref or ""],
    }
    env = [{"name": "CHECKOUT", "value": checkout}]
    if secret is not None:
        key = f"{GIT_CREDENTIALS_DIR}/{SECRET_KEY}"
        if ssh:
            command = (
                "ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=accept-new "
                f"-o IdentitiesOnly=yes -i {key}"
            )
            env.append({"name": "GIT_SSH_COMMAND", "value": command})
        else:
            env.append({"name": "BERTH_GIT_CREDENTIALS", "value": key})
        creds = f"git-{i}-credentials"
        volumes.append({"name": creds, "secret": {"secretName": secret, "defaultMode": 0o400}})
        mounts = [{"name": creds, "mountPath": GIT_CREDENTIALS_DIR, "readOnly": True}]
    else:
        mounts = []
    container["env"] = env
    container["volumeMounts"] = [{"name": volume, "mountPath": checkout}, *mounts]
    out.comments.append(
        f"mounts[{i}]: git {m.source} is cloned by init container git-{i} ({GIT_IMAGE}) "
        "into an emptyDir at each pod start"
    )
    return container


# The init container's clone, as berth's (daemon/integrations/git.py): a shallow clone of
# the branch or tag; a commit id: a full clone and a checkout. Credentials from the mounted
# Secret: git's credential format through a helper that cats it, or an SSH key (-i).
_GIT_SCRIPT: Final = (
    'set -eu; url="$1"; ref="$2"; '
    'helper=""; [ -n "${BERTH_GIT_CREDENTIALS:-}" ] && '
    'helper=\'!f() { test "$1" = get && cat "$BERTH_GIT_CREDENTIALS"; }; f\'; '
    'g() { git -c credential.helper= ${helper:+-c "credential.helper=$helper"} "$@"; }; '
    'if [ -z "$ref" ]; then g clone --depth 1 "$url" "$CHECKOUT"; '
    "elif printf %s \"$ref\" | grep -Eqx '[0-9a-f]{7,64}'; then "
    'g clone "$url" "$CHECKOUT" && git -C "$CHECKOUT" checkout --quiet "$ref"; '
    'else g clone --depth 1 --branch "$ref" "$url" "$CHECKOUT"; fi'
)


def _registry_secret(spec: DeploymentSpec, out: Pod) -> str:
    r = spec.registry
    assert r is not None
    name = f"{spec.name}-registry"
    try:
        server = parse_image_ref(spec.image).domain or "docker.io"
    except ValueError:
        server = "REGISTRY"
    if r.auth_file is not None:
        create = (
            f"kubectl create secret generic {name} --type=kubernetes.io/dockerconfigjson "
            f"--from-file=.dockerconfigjson={r.auth_file}"
        )
    else:
        if r.password_file is not None:
            password = f'"$(cat {r.password_file})"'
        else:
            secret = r.password.name if r.password is not None else "?"
            password = f'"$(cat PATH)"  # PATH: a file holding berth secret {secret}\'s value'
        create = (
            f"kubectl create secret docker-registry {name} --docker-server={server} "
            f"--docker-username={r.username} --docker-password={password}"
        )
    _add_secret(out, SecretNeeded(name, create))
    return name


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
    if spec.resources.gpus:
        out.notes.append(
            "nvidia.com/gpu limits need the NVIDIA device plugin (or GPU operator) on the "
            "cluster's GPU nodes"
        )
