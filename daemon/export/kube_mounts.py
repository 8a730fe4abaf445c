"""The pod's volumes and the Secrets it names, for the Kubernetes and KServe exports.

`volumes(spec, needs)` maps `[[mounts]]` and `/dev/shm`: a Podman volume is a
PersistentVolumeClaim named after it (lower-case, `_` -> `-`), ReadWriteOnce when one
replica at most uses it, else ReadWriteMany; a bind is a hostPath (node-local: a comment
says so); a model is `subPath SOURCE` of one `berth-models` claim (berth's model store); a
git mount is an emptyDir filled by an init container that clones as berthd does
(daemon/integrations/git.py: a shallow clone of a branch or tag, a full clone and a checkout
for a commit id; credentials from a Secret, through a credential helper that cats the file,
or as an SSH key given with `-i`). `shm_size` is a memory emptyDir at /dev/shm.

Secrets are named, never filled: each one the pod refers to is a `SecretNeeded` with the
kubectl line that creates it from a file (`--from-file=value=...`), run before the apply.
A berth secret's name becomes a Kubernetes name (`_` -> `-`), said in a comment when it changes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Final

from config.image_ref import parse_image_ref
from config.secret_ref import SecretRef
from config.spec import DeploymentSpec, Mount, MountType
from daemon.export.bundle import LeftOut

GIT_IMAGE: Final = "docker.io/alpine/git:2.47.2"
MODELS_CLAIM: Final = "berth-models"
GIT_CREDENTIALS_DIR: Final = "/berth/git-credentials"
SECRET_KEY: Final = "value"  # the key of each generic Secret the export refers to
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
class PodNeeds:
    """What a pod refers to beyond itself, and what the export says about it."""

    claims: list[Claim] = field(default_factory=list)
    secrets: list[SecretNeeded] = field(default_factory=list)
    left_out: list[LeftOut] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)  # for the workload's file


def kube_name(name: str) -> str:
    """A berth name (secret, volume) as a Kubernetes object name (DNS-1123 subdomain)."""
    out = _NOT_DNS.sub("-", name.lower()).strip("-.")
    return out[:253] or "x"


def byte_quantity(n: int) -> str:
    """Bytes as the largest exact binary unit ("64Mi"), else plain bytes."""
    for suffix, unit in _BINARY:
        if n >= unit and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


def generic_secret(ref: SecretRef, field_path: str, out: PodNeeds) -> str:
    name = kube_name(ref.name)
    if name != ref.name:
        out.comments.append(f"{field_path}: berth's secret {ref.name!r} is Secret {name!r} here")
    create = (
        f"kubectl create secret generic {name} --from-file={SECRET_KEY}=PATH"
        f"  # PATH: a file holding berth secret {ref.name}'s value"
    )
    add_secret(out, SecretNeeded(name, create))
    return name


def add_secret(out: PodNeeds, secret: SecretNeeded) -> None:
    if all(s.name != secret.name for s in out.secrets):
        out.secrets.append(secret)


def volumes(
    spec: DeploymentSpec, out: PodNeeds
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


def _claim(spec: DeploymentSpec, m: Mount, i: int, out: PodNeeds, seen: dict[str, str]) -> str:
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


def _models_claim(spec: DeploymentSpec, out: PodNeeds) -> None:
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
    out: PodNeeds,
) -> dict[str, Any]:
    checkout = f"/berth/git-{i}"
    ssh = m.source.startswith("ssh://") or ("://" not in m.source and "@" in m.source)
    secret: str | None = None
    if m.credentials is not None:
        secret = generic_secret(m.credentials, f"mounts[{i}].credentials.secret", out)
    elif m.credentials_file is not None:
        secret = f"{spec.name}-git-{i}"
        add_secret(
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


def registry_secret(spec: DeploymentSpec, out: PodNeeds) -> str:
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
    add_secret(out, SecretNeeded(name, create))
    return name
