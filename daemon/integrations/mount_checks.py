"""Apply-time checks of what a spec asks of the host's file system: `[[mounts]]` and `[registry]`.

`mount_problems(spec, settings)` returns every problem, each naming its field
(`mounts[0].source: ...`), the form the rest of a refused spec's problems take. It only looks
(stat, realpath, access) and opens credential files through `config.credentials`; it never
puts a secret's contents in a message. `volume_problems(spec, runtime, ...)` asks Podman
about the spec's named volumes (async: the one check here that needs the runtime).

The rules (docs/integrations.md):
- A bind source must exist and lie under one of berthd's `allowed_roots` both as written and
  after resolving symbolic links (a link that leads out of the roots is an escape).
- Whatever the roots allow (even `allowed_roots = ["/"]`), berth never mounts `/`, the system
  trees (`/etc`, `/proc`, `/sys`, `/dev`, `/run`), `/root`, `/boot`, Podman's storage
  (`/var/lib/containers`), the Podman socket, its own admin socket or its state dir; nor any
  directory that contains one of them, because mounting a parent exposes the child; and
  `/usr` and `/home` only read-only. Inside the state dir only `volumes/` and `models/` may
  be mounted.
- A git mount's `file://` URL is a bind in disguise: its path obeys the bind rules.
- A named volume must be one berth made for this deployment (its labels say so:
  `io.berth.instance` of this berthd and `io.berth.deployment` of this deployment), or not
  exist yet (berth then makes it so), unless berthd.toml lists it in `[mounts]
  shared_volumes`: otherwise a spec could read another application's volume.
- A model is the directory `<state_dir>/models/<name>` (it may be a link to a directory
  elsewhere, which must then obey the bind rules); it must exist, be a readable directory and
  hold at least one entry. Models and git checkouts are always read-only.
- Credential files (git `credentials_file`, `registry.auth_file`, `registry.password_file`)
  must pass `config.credentials`: under `credentials_roots`, no symbolic link on the way,
  regular, owned by root or berthd, not writable by group or others.

The same checks run again when a replica's mounts are prepared
(`daemon.integrations.mounts`), against the resolved path that is then handed to Podman, so
a link swapped after apply cannot escape.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote, urlparse, urlsplit

from config.credentials import CredentialFileError, read_credential
from config.errors import Problem
from config.settings import DaemonSettings
from config.spec import DeploymentSpec, Mount, MountType
from daemon.integrations.registry import registry_problems
from daemon.runtime.interface import LABEL_DEPLOYMENT, ContainerRuntime, RuntimeFailure
from daemon.runtime.service import SYSTEM_URL

# Never mounted, nor anything that holds them, whatever allowed_roots say.
SYSTEM_TREES = tuple(
    Path(p)
    for p in ("/etc", "/proc", "/sys", "/dev", "/run", "/root", "/boot", "/var/lib/containers")
)
# Mounted read-only at most: a replica must not rewrite the host's programs or users' homes.
READ_ONLY_TREES = (Path("/usr"), Path("/home"))
LABEL_VOLUME_DEPLOYMENT = LABEL_DEPLOYMENT
# Sub-directories of the state dir meant to be mounted: user data, not berth's own state.
STATE_DIR_MOUNTABLE = ("volumes", "models")
MODELS_DIR = "models"


def models_root(state_dir: Path) -> Path:
    """Where models live: `<state_dir>/models`, one directory (or link) per model name."""
    return state_dir / MODELS_DIR


def model_dir(state_dir: Path, name: str) -> Path:
    """The directory of model `name` ("tiny", "org/llama-3-8b"), as written (not resolved)."""
    return models_root(state_dir) / name


def mount_problems(spec: DeploymentSpec, settings: DaemonSettings) -> list[str]:
    """Every problem with the spec's `[[mounts]]` and `[registry]` on this host."""
    problems: list[Problem] = []
    for index, mount in enumerate(spec.mounts):
        problems += _mount_problems(f"mounts[{index}]", mount, settings)
    problems += registry_problems(spec.registry, settings.credentials_roots)
    return [str(p) for p in problems]


async def volume_problems(
    spec: DeploymentSpec,
    runtime: ContainerRuntime,
    own_labels: Mapping[str, str],
    settings: DaemonSettings,
) -> list[str]:
    """Every named volume of `spec` that it may not use (asked of Podman now).

    `own_labels` are the labels berthd puts on what it makes (`io.berth.instance`). A
    volume Podman cannot be asked about now is not refused here: the same check runs when
    the volume is prepared for a replica (`daemon.integrations.mounts`)."""
    problems: list[str] = []
    for index, mount in enumerate(spec.mounts):
        if mount.type is not MountType.VOLUME or mount.source in settings.shared_volumes:
            continue
        try:
            labels = await runtime.volume_labels(mount.source)
        except RuntimeFailure:
            continue
        reason = volume_problem(mount.source, labels, spec.name, own_labels, settings)
        if reason is not None:
            problems.append(str(Problem(f"mounts[{index}].source", reason, mount.source)))
    return problems


def volume_problem(
    name: str,
    labels: Mapping[str, str] | None,
    deployment: str,
    own_labels: Mapping[str, str],
    settings: DaemonSettings,
) -> str | None:
    """Why deployment `deployment` may not mount volume `name` (whose labels are `labels`,
    None when it does not exist yet), or None when it may."""
    if labels is None or name in settings.shared_volumes:
        return None
    wanted = {**own_labels, LABEL_VOLUME_DEPLOYMENT: deployment}
    if all(labels.get(key) == value for key, value in wanted.items()):
        return None
    if all(labels.get(key) == value for key, value in own_labels.items()):
        owner = labels.get(LABEL_VOLUME_DEPLOYMENT)
        whose = f'deployment "{owner}"' if owner else "no deployment in particular"
        made = f"is a volume berth made for {whose}, not for this one"
    else:
        made = "is a Podman volume that berth did not make for this deployment"
    return f"{made}; berthd.toml's [mounts] shared_volumes lists the volumes any may mount"


def _mount_problems(where: str, mount: Mount, settings: DaemonSettings) -> list[Problem]:
    if mount.type is MountType.BIND:
        reason = bind_source_problem(mount.source, settings, read_only=mount.read_only)
        return [Problem(f"{where}.source", reason, mount.source)] if reason else []
    if mount.type is MountType.MODEL:
        found: list[Problem] = []
        reason = model_problem(mount.source, settings)
        if reason:
            found.append(Problem(f"{where}.source", reason, mount.source))
        if not mount.read_only:
            found.append(Problem(f"{where}.read_only", "model mounts are always read-only", False))
        return found
    if mount.type is MountType.GIT:
        found = []
        reason = git_source_problem(mount.source, settings)
        if reason:
            found.append(Problem(f"{where}.source", reason, mount.source))
        if mount.credentials_file is not None:
            field = f"{where}.credentials_file"
            try:
                read_credential(
                    mount.credentials_file, field=field, roots=settings.credentials_roots
                )
            except CredentialFileError as exc:
                found.append(Problem(field, exc.reason, mount.credentials_file))
        if not mount.read_only:
            found.append(
                Problem(
                    f"{where}.read_only",
                    "git checkouts are shared by the replicas and always read-only",
                    False,
                )
            )
        return found
    return []  # a volume: any valid name will do, Podman creates it when first needed


def git_source_problem(url: str, settings: DaemonSettings) -> str | None:
    """Why a git mount may not clone `url` here: a `file://` URL's path must be one a bind
    mount could have, read-only (the parser admits only network URLs otherwise)."""
    if not url.lower().startswith("file://"):
        return None
    path = posixpath.normpath(unquote(urlsplit(url).path))
    reason = bind_source_problem(path, settings, read_only=True)
    return f"a file:// repository {path}: {reason}" if reason else None


def bind_source_problem(
    source: str, settings: DaemonSettings, *, read_only: bool = True
) -> str | None:
    """Why `source` may not be bind-mounted on this host, or None when it may."""
    if not settings.allows_bind_source(source):
        return f"not under berthd's allowed roots ({_roots(settings)})"
    path = Path(source)
    # As written first: a protected path is refused whether or not it exists here.
    reason = protected_problem(path, settings, read_only=read_only)
    if reason is not None:
        return reason
    try:
        resolved = path.resolve(strict=True)
    except FileNotFoundError:
        return "does not exist on this host"
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symbolic link loop
        return f"cannot be resolved: {exc}"
    roots = tuple(_resolve(root) for root in settings.allowed_roots)
    if not any(_within(resolved, root) for root in roots):
        return (
            f"resolves to {resolved} (through a symbolic link), outside berthd's allowed roots "
            f"({_roots(settings)})"
        )
    return protected_problem(resolved, settings, read_only=read_only)


def protected_problem(
    resolved: Path, settings: DaemonSettings, *, read_only: bool = True
) -> str | None:
    """Why this resolved path is one berth never mounts (or never read-write), whatever the
    roots say."""
    if resolved == Path("/"):
        return "is the host's root directory; berth never mounts it"
    for tree in SYSTEM_TREES:
        tree = _resolve(tree)
        if _within(resolved, tree) or _within(tree, resolved):
            return f"{resolved} is or holds the system directory {tree}; berth never mounts it"
    for tree in READ_ONLY_TREES:
        tree = _resolve(tree)
        if not read_only and (_within(resolved, tree) or _within(tree, resolved)):
            return (
                f"{resolved} is or holds {tree}; berth mounts it only read-only (read_only = true)"
            )
    state = _resolve(settings.state_dir)
    if _within(state, resolved):
        return f"{resolved} is or holds berthd's state directory {state}; berth never mounts it"
    if _within(resolved, state) and not any(
        _within(resolved, state / sub) for sub in STATE_DIR_MOUNTABLE
    ):
        return (
            f"{resolved} is inside berthd's state directory; only its "
            + " and ".join(f"{sub}/" for sub in STATE_DIR_MOUNTABLE)
            + " may be mounted"
        )
    for sock in _sockets(settings):
        if _within(sock, resolved):
            return f"{resolved} is or holds the socket {sock}; berth never mounts it"
    return None


def model_problem(name: str, settings: DaemonSettings) -> str | None:
    """Why model `name` cannot be mounted, or None when its directory is usable."""
    path = model_dir(settings.state_dir, name)
    try:
        resolved = path.resolve(strict=True)
    except FileNotFoundError:
        return f"no such model: {path} does not exist"
    except (OSError, RuntimeError) as exc:
        return f"cannot be resolved: {exc}"
    if not resolved.is_dir():
        return f"{path} is not a directory"
    root = _resolve(models_root(settings.state_dir))
    if not _within(resolved, root):
        # A link to the real files elsewhere (a bigger disk) is fine when a bind could be.
        reason = bind_source_problem(str(resolved), settings)
        if reason:
            return f"{path} links to {resolved}, which may not be mounted: {reason}"
    else:
        reason = protected_problem(resolved, settings)
        if reason:
            return reason
    if not os.access(resolved, os.R_OK | os.X_OK):
        return f"{path} is not readable by berthd"
    try:
        with os.scandir(resolved) as entries:
            if next(entries, None) is None:
                return f"{path} is empty"
    except OSError as exc:
        return f"{path} cannot be listed: {exc.strerror}"
    return None


def _sockets(settings: DaemonSettings) -> list[Path]:
    urls = [settings.podman_url] if settings.podman_url else [SYSTEM_URL]
    found = [settings.socket, settings.state_dir / "podman.sock"]
    for url in urls:
        parsed = urlparse(url)
        if parsed.scheme in ("unix", "http+unix") and parsed.path:
            found.append(Path(parsed.path))
    return [_resolve(p) for p in found]


def _resolve(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _within(path: Path, root: Path) -> bool:
    """`path` is `root` or lies under it (both resolved or both as written)."""
    return path == root or root in path.parents


def _roots(settings: DaemonSettings) -> str:
    return ", ".join(str(root) for root in settings.allowed_roots) or "none"
