"""The Quadlet export's apply steps and notes: what to run, in order, on the host that gets
the units, and what to know first.

The steps make everything the units need before `systemctl start`: the Podman secrets
(from berth's secret files, which hold exactly each value: `STATE/secrets/NAME`,
`/var/lib/berth/secrets/NAME` with berthd's default state directory, readable by root
only), the registry login or pull, and the git checkouts. berthd cloned a git mount itself
for each revision; here the steps clone it once into `/var/lib/berth-export/NAME/git-I`
(I: the mount's index in `mounts`), which the unit binds, as berth's git integration
decides (`daemon.integrations.git`): `--depth 1 [--branch REF]`, or for a ref that looks
like a commit id a full clone and a checkout; credentials through a credential helper that
prints the file (https) or as ssh's key (`-i`). Every value from the spec is shell-quoted.
"""

from __future__ import annotations

import re
import shlex

from config.image_ref import parse_image_ref
from config.secret_ref import SecretRef
from config.spec import DeploymentSpec, Mount, MountType, UpstreamProtocol

# berthd's default state directory (config.settings.DEFAULT_STATE_DIR) and what lies in it.
STATE_DIR = "/var/lib/berth"
SECRETS_DIR = f"{STATE_DIR}/secrets"
MODELS_DIR = f"{STATE_DIR}/models"
# Where the apply steps clone git mounts: one directory per deployment, git-I per mount.
EXPORT_DIR = "/var/lib/berth-export"
ROOTFUL_UNITS = "/etc/containers/systemd"
ROOTLESS_UNITS = "~/.config/containers/systemd"

_COMMIT = re.compile(r"[0-9a-f]{7,64}")  # as daemon.integrations.git tells a commit id
_HELPER = '!f() {{ test "$1" = get && cat {path}; }}; f'


def unit_name(spec: DeploymentSpec, index: int) -> str:
    return f"{spec.name}-{index}"


def secret_file(name: str) -> str:
    """Where berthd keeps secret `name`'s value (with its default state directory)."""
    return f"{SECRETS_DIR}/{name}"


def git_dir(spec: DeploymentSpec, index: int) -> str:
    """The host directory the apply steps clone `mounts[index]` into."""
    return f"{EXPORT_DIR}/{spec.name}/git-{index}"


def built_here(image: str) -> bool:
    """A `localhost/` image: built on the berth host, in no registry to pull it from."""
    try:
        return parse_image_ref(image).domain == "localhost"
    except ValueError:
        return False


def is_ssh_url(url: str) -> bool:
    """As daemon.integrations.git: `ssh://` or scp-like `user@host:path`."""
    return url.startswith("ssh://") or ("://" not in url and "@" in url and ":" in url)


def _credentials_file(mount: Mount) -> str | None:
    if mount.credentials is not None:
        return secret_file(mount.credentials.name)
    return mount.credentials_file


def clone_lines(spec: DeploymentSpec, index: int, mount: Mount) -> list[str]:
    """The shell lines that clone `mount` (a git mount) where its unit binds it."""
    dest = shlex.quote(git_dir(spec, index))
    url = shlex.quote(mount.source)
    git = "git"
    creds = _credentials_file(mount)
    if creds is not None and is_ssh_url(mount.source):
        ssh = shlex.join(["ssh", "-i", creds, "-o", "IdentitiesOnly=yes"])
        git = f"env GIT_SSH_COMMAND={shlex.quote(ssh)} git"  # a step in lower case is shell
    elif creds is not None:
        git = f"git -c credential.helper={shlex.quote(_HELPER.format(path=shlex.quote(creds)))}"
    ref = mount.ref
    if ref is not None and _COMMIT.fullmatch(ref):
        return [f"{git} clone {url} {dest}", f"git -C {dest} checkout {shlex.quote(ref)}"]
    branch = f" --branch {shlex.quote(ref)}" if ref is not None else ""
    return [f"{git} clone --depth 1{branch} {url} {dest}"]


def _git_mounts(spec: DeploymentSpec) -> list[tuple[int, Mount]]:
    return [(i, m) for i, m in enumerate(spec.mounts) if m.type is MountType.GIT]


def _git_steps(spec: DeploymentSpec) -> list[str]:
    mounts = _git_mounts(spec)
    if not mounts:
        return []
    intro = (
        "Clone the git mounts before the first start, as root: berthd cloned them itself; "
        f"here each is a directory under {EXPORT_DIR}/{spec.name}/ that its unit binds "
        "(rootless: clone into a directory of yours and change the Volume= lines to it)."
    )
    sources = [
        f"berth's secret {m.credentials.name}, the file {secret_file(m.credentials.name)} "
        "(readable by root only)"
        for _, m in mounts
        if m.credentials is not None
    ]
    sources += [
        f"the credentials_file {m.credentials_file}"
        for _, m in mounts
        if m.credentials_file is not None
    ]
    if sources:
        intro += (
            " The clones read their credentials from "
            + "; ".join(sorted(set(sources)))
            + ", on the berth host: on another host, copy them to the same paths first."
        )
    local = sorted({m.source for _, m in mounts if m.source.startswith("file://")})
    if local:
        intro += (
            " "
            + ", ".join(local)
            + (" is a repository" if len(local) == 1 else " are repositories")
            + " on the berth host: the clone works there; on another host, copy "
            + ("it" if len(local) == 1 else "them")
            + " to the same path first (or change the URL)."
        )
    steps = [intro, f"mkdir -p {shlex.quote(f'{EXPORT_DIR}/{spec.name}')}"]
    for i, mount in mounts:
        steps.extend(clone_lines(spec, i, mount))
    return steps


def _secret_steps(spec: DeploymentSpec) -> list[str]:
    secrets = sorted({v.name for v in spec.env.values() if isinstance(v, SecretRef)})
    if not secrets:
        return []
    return [
        "Create the Podman secrets from berth's: each value is in its berth secret file, "
        f"{SECRETS_DIR}/NAME on the berth host (readable by root only). Run this there as "
        "root, or copy the files to the same paths on this host first.",
        *(f"podman secret create {shlex.quote(s)} {shlex.quote(secret_file(s))}" for s in secrets),
    ]


def _registry_steps(spec: DeploymentSpec) -> list[str]:
    registry = spec.registry
    image = shlex.quote(spec.image)
    if registry is None:
        if spec.pull.value != "never" and not built_here(spec.image):
            return [f"podman pull {image}"]
        return []
    if registry.auth_file is not None:
        return [f"podman pull --authfile {shlex.quote(registry.auth_file)} {image}"]
    domain = shlex.quote(parse_image_ref(spec.image).domain or "docker.io")
    password = registry.password_file
    if registry.password is not None:
        password = secret_file(registry.password.name)
    login = f"podman login --username {shlex.quote(registry.username or '')}"
    if password is None:
        login = f"{login} {domain}"
    else:
        login = f"{login} --password-stdin {domain} < {shlex.quote(password)}"
    return [login, f"podman pull {image}"]


def apply_steps(spec: DeploymentSpec, count: int) -> tuple[str, ...]:
    units = " ".join(unit_name(spec, i) for i in range(count))
    steps = [*_secret_steps(spec), *_registry_steps(spec), *_git_steps(spec)]
    files = (
        "*.container *.volume"
        if any(m.type is MountType.VOLUME for m in spec.mounts)
        else ("*.container")
    )
    steps.append(
        f"cp {files} {ROOTFUL_UNITS}/  # as root; rootless: {ROOTLESS_UNITS}/ and "
        "systemctl --user below"
    )
    steps.append("systemctl daemon-reload")
    if spec.enabled:
        steps.append(f"systemctl start {units}")
    else:
        steps.append(
            "The spec is disabled (enabled = false), so berth ran no replica of it and "
            f"nothing is started here; systemctl start {units} starts them."
        )
    return tuple(steps)


def notes(spec: DeploymentSpec, count: int, address: str) -> tuple[str, ...]:
    e = spec.endpoint
    names = ", ".join(unit_name(spec, i) for i in range(count))
    found = [
        "A single host has no load balancer: each replica answers on its own port "
        f"({address}:{e.port}"
        + (f" to {e.port + count - 1}" if count > 1 else "")
        + "); put a reverse proxy (nginx, HAProxy, Caddy) in front for one address.",
        f"No autoscaling: {count} replica{'s' if count > 1 else ''} ({names}), "
        "started and stopped with systemctl.",
        "No rolling update or rollback (berth replaces replicas one at a time and undoes a "
        "failed update by default): edit the units, run systemctl daemon-reload, then "
        f"restart the replicas one at a time (systemctl restart {unit_name(spec, 0)}).",
        "The healthchecks run inside the container: an HTTP probe needs curl or wget in the "
        "image, a TCP probe nc or bash.",
    ]
    if built_here(spec.image):
        found.append(
            f"The image {spec.image} was built on the berth host and is in no registry: on "
            f"another host, copy it first (podman save {spec.image} | ssh HOST podman load)."
        )
    if any(m.type is MountType.MODEL for m in spec.mounts):
        found.append(
            f"Model mounts read berth's model store, {MODELS_DIR}/MODEL on the berth host "
            "(another state directory: change the Volume= lines); on another host, copy "
            "the models to the same path first."
        )
    if not spec.enabled:
        found.append(
            "The units have no [Install] section (the spec is disabled): nothing starts "
            "them at boot, only systemctl start."
        )
    if spec.endpoint.upstream_protocol is UpstreamProtocol.H2C:
        found.append("Clients reach the replicas directly: they must speak h2c (gRPC) themselves.")
    return tuple(found)
