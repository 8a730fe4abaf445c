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
kubectl line that creates it from a file (`--from-file=value=...`: a berth secret's file,
`STATE/secrets/NAME` on the berth host), run before the apply (`kube_steps` orders the
steps and makes the registry's Secret).

Names: a berth name (secret, volume) becomes a Kubernetes name (lower-case, `_` -> `-`),
said in a comment when it changes. Every mapped name is unique in its kind (`Names`): the
first keeps its mapped name, a later berth name that maps to a taken one gets `-2`, `-3`
(a comment and a README note say so); `berth-models` is the model store's claim, never a
volume's. The same berth name is always the same Kubernetes name.

Kubernetes expands `$(VAR)` in a container's command, args and env values and reduces
`$$` to `$`; berth passes them literally, so every `$` of them is written `$$` (`literal`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from shlex import quote
from typing import Any, Final

from config.secret_ref import SecretRef
from config.spec import DeploymentSpec, Mount, MountType
from daemon.export.bundle import LeftOut

GIT_IMAGE: Final = "docker.io/alpine/git:2.47.2"
MODELS_CLAIM: Final = "berth-models"
GIT_CREDENTIALS_DIR: Final = "/berth/git-credentials"
SECRET_KEY: Final = "value"  # the key of each generic Secret the export refers to
# berthd's state dir by default (docs/operations.md): its secrets and its model store
BERTH_SECRETS: Final = "/var/lib/berth/secrets"
BERTH_MODELS: Final = "/var/lib/berth/models"
_BINARY = (("Ei", 2**60), ("Pi", 2**50), ("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10))
_NOT_DNS = re.compile(r"[^a-z0-9.-]")


@dataclass(frozen=True)
class Claim:
    """A PersistentVolumeClaim the pod mounts (made by the Kubernetes export)."""

    name: str
    access_mode: str  # ReadWriteOnce / ReadWriteMany
    comments: tuple[str, ...] = ()
    shared: bool = False  # berth-models: every export's; no per-deployment label


@dataclass(frozen=True)
class SecretNeeded:
    """A Secret the pod refers to by name, and the kubectl line that creates it."""

    name: str
    create: str


@dataclass
class Names:
    """The Kubernetes names of one kind (claims, or Secrets) given so far: each unique."""

    owners: dict[str, str] = field(default_factory=dict)  # Kubernetes name -> whose it is
    given: dict[str, str] = field(default_factory=dict)  # berth's key -> Kubernetes name

    def give(self, key: str, wanted: str, owner: str) -> tuple[str, str | None]:
        """(the name for `key`, whose `wanted` is when it was taken already, else None)."""
        if key in self.given:
            return self.given[key], None
        name, n = wanted, 2
        while name in self.owners:  # ends: at most len(owners) names are taken
            suffix = f"-{n}"
            name, n = wanted[: 253 - len(suffix)].rstrip("-.") + suffix, n + 1
        taken_by = self.owners[wanted] if name != wanted else None
        self.owners[name] = owner
        self.given[key] = name
        return name, taken_by


def _claim_names() -> Names:
    model_store = "berth's model store (model mounts)"
    return Names(owners={MODELS_CLAIM: model_store}, given={"models": MODELS_CLAIM})


@dataclass
class PodNeeds:
    """What a pod refers to beyond itself, and what the export says about it."""

    claims: list[Claim] = field(default_factory=list)
    secrets: list[SecretNeeded] = field(default_factory=list)
    left_out: list[LeftOut] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)  # for the workload's file
    claim_names: Names = field(default_factory=_claim_names)
    secret_names: Names = field(default_factory=Names)
    models: list[str] = field(default_factory=list)  # the model mounts' sources, in order


def literal(text: str) -> str:
    """`text` as a command, args or env value Kubernetes passes as is: `$` written `$$`."""
    return text.replace("$", "$$")


def kube_name(name: str) -> str:
    """A berth name (secret, volume) as a Kubernetes object name (a DNS-1123 subdomain:
    dot-separated labels of [a-z0-9-], each starting and ending alphanumeric): other
    characters -> `-`, each label stripped of `-`, empty labels dropped, cut to 253 (then
    stripped again). Two names may map alike: `Names` keeps them apart (-2)."""
    return _labels(_labels(_NOT_DNS.sub("-", name.lower()))[:253]) or "x"


def _labels(text: str) -> str:
    return ".".join(label.strip("-") for label in text.split(".") if label.strip("-"))


def dns1035(name: str) -> str:
    """`name` as a Service's (and an InferenceService's) name: those must start with a
    letter (DNS-1035), berth's may start with a digit: `d-` put before it, cut to 63."""
    if name[:1].isalpha():
        return name
    return f"d-{name}"[:63].rstrip("-")


def byte_quantity(n: int) -> str:
    """Bytes as the largest exact binary unit ("64Mi"), else plain bytes."""
    for suffix, unit in _BINARY:
        if n >= unit and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


def secret_name(key: str, wanted: str, owner: str, field_path: str, out: PodNeeds) -> str:
    """A unique Secret name for `key` (a taken one is said in a comment and a note)."""
    name, taken_by = out.secret_names.give(key, wanted, owner)
    if taken_by is not None:
        why = f"{wanted!r} is taken by {taken_by}"
        out.comments.append(f"{field_path}: {owner} is Secret {name!r} here ({why})")
        out.notes.append(
            f"Secret {name} is {owner}: {why} (each mapped name is unique: a later one gets -2, -3)"
        )
    return name


def secrets_note(out: PodNeeds) -> None:
    note = (
        "berth's secrets are files on the berth host, STATE/secrets/NAME "
        f"({BERTH_SECRETS}/NAME with the default state dir, readable by root only: "
        "docs/security.md): run the kubectl create secret lines there as root, or copy "
        "the files to where kubectl runs"
    )
    if note not in out.notes:
        out.notes.append(note)


def generic_secret(ref: SecretRef, field_path: str, out: PodNeeds) -> str:
    key = f"secret:{ref.name}"
    known = key in out.secret_names.given
    name = secret_name(key, kube_name(ref.name), f"berth's secret {ref.name!r}", field_path, out)
    if known:
        return name
    if name == kube_name(ref.name) != ref.name:
        out.comments.append(f"{field_path}: berth's secret {ref.name!r} is Secret {name!r} here")
    secrets_note(out)
    create = generic_secret_line(name, f"{BERTH_SECRETS}/{ref.name}")
    out.secrets.append(SecretNeeded(name, create))
    return name


def generic_secret_line(name: str, path: str) -> str:
    """The kubectl line that makes Secret `name` (key `value`) from file `path` (quoted:
    it is pasted into a root shell)."""
    return (
        f"kubectl create secret generic {quote(name)} --from-file={quote(f'{SECRET_KEY}={path}')}"
    )


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
    for i, m in enumerate(spec.mounts):
        name = f"{m.type.value}-{i}"
        mount: dict[str, Any] = {"name": name, "mountPath": m.target}
        # berthd mounts git checkouts and models read-only whatever read_only says
        # (daemon/integrations/mounts.py)
        if m.read_only or m.type in (MountType.GIT, MountType.MODEL):
            mount["readOnly"] = True
        if m.type == MountType.VOLUME:
            claim = _claim(spec, m, i, out)
            volumes.append({"name": name, "persistentVolumeClaim": {"claimName": claim}})
        elif m.type == MountType.BIND:
            # no hostPath type ("": no check): the source may be a file or a directory
            volumes.append({"name": name, "hostPath": {"path": m.source}})
            out.comments.append(
                f"mounts[{i}]: bind {m.source} is a hostPath: that file or directory must "
                "exist on every node that may run the pod (or use a PersistentVolume instead)"
            )
        elif m.type == MountType.MODEL:
            volumes.append({"name": name, "persistentVolumeClaim": {"claimName": MODELS_CLAIM}})
            mount["subPath"] = m.source
            _models_claim(spec, m.source, out)
        else:
            volumes.append({"name": name, "emptyDir": {}})
            if m.source.startswith("file://"):  # on the berth host: no pod can clone it
                out.left_out.append(LeftOut(f"mounts[{i}].source", _LOCAL_GIT))
            else:
                init.append(_git_init(spec, m, i, name, volumes, out))
        mounts.append(mount)
    if out.models:
        out.notes.append(_models_note(out))
    return volumes, mounts, init


def _access_mode(spec: DeploymentSpec) -> str:
    return "ReadWriteOnce" if max(spec.replicas.max, 1) == 1 else "ReadWriteMany"


def _claim(spec: DeploymentSpec, m: Mount, i: int, out: PodNeeds) -> str:
    key = f"volume:{m.source}"
    if key in out.claim_names.given:
        return out.claim_names.given[key]
    wanted = kube_name(m.source)
    owner = f"Podman volume {m.source!r}"
    name, taken_by = out.claim_names.give(key, wanted, owner)
    comments = [f"mounts[{i}]: {owner}"]
    if taken_by is not None:
        why = f"{wanted!r} is taken by {taken_by}"
        comments.append(f"named {name!r}: {why} (a later name that maps to a taken one gets -2)")
        out.notes.append(
            f"PersistentVolumeClaim {name} is {owner}: {why} (each mapped name is unique: a "
            "later one gets -2, -3)"
        )
    elif name != m.source:
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


def _models_claim(spec: DeploymentSpec, source: str, out: PodNeeds) -> None:
    if source not in out.models:
        out.models.append(source)
    if any(c.name == MODELS_CLAIM for c in out.claims):
        return
    comments = (
        f"berth's model store (<state_dir>/models, {BERTH_MODELS} by default, on the berth "
        'host), for `type = "model"` mounts: each model\'s directory at its name (subPath); '
        "README.md's apply steps copy them in",
        "shared by every export that mounts models: always ReadWriteMany (a claim's "
        "accessModes cannot change, so every export must ask the same; not ReadOnlyMany: "
        "the apply steps fill it), mounted readOnly by the pods; no deployment's name label",
    )
    out.claims.append(Claim(MODELS_CLAIM, "ReadWriteMany", comments, shared=True))


def _models_note(out: PodNeeds) -> str:
    listed = ", ".join(out.models)
    return (
        f"PersistentVolumeClaim {MODELS_CLAIM} must hold the model(s) {listed} (from "
        f"<state_dir>/models on the berth host, {BERTH_MODELS} by default, readable by root "
        "only) before the pods start: the apply steps create it, copy them in through a "
        f"helper pod, then apply the rest. Its size is a 10Gi placeholder: set at least the "
        "models' size (the claim is shared by every export that mounts models)"
    )


_LOCAL_GIT: Final = (
    "a file:// repository is on the berth host, which the cluster cannot reach: the mount "
    "is an empty emptyDir here; push the repository where the cluster reaches it (an "
    "https or ssh URL), or put a checkout in a PersistentVolumeClaim or hostPath and mount "
    "that instead"
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
        field_path = f"mounts[{i}].credentials_file"
        owner = f"{field_path} {m.credentials_file}"
        secret = secret_name(f"file:{i}", f"{spec.name}-git-{i}", owner, field_path, out)
        create = generic_secret_line(secret, m.credentials_file)
        out.secrets.append(SecretNeeded(secret, create))
    script = [_GIT_SCRIPT, "git-clone", m.source, m.ref or ""]
    container: dict[str, Any] = {
        "name": f"git-{i}",
        "image": GIT_IMAGE,
        "command": ["/bin/sh", "-c", *(literal(a) for a in script)],
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
    container["env"] = [{"name": e["name"], "value": literal(e["value"])} for e in env]
    container["volumeMounts"] = [{"name": volume, "mountPath": checkout}, *mounts]
    out.comments.append(
        f"mounts[{i}]: git {m.source} is cloned by init container git-{i} ({GIT_IMAGE}) "
        "into an emptyDir at each pod start (its script's $ are written $$: Kubernetes "
        "reduces $$ to $)"
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
