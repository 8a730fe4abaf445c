"""Apply-time checks of what a spec asks of the host's file system: `[[mounts]]` and `[registry]`.

`mount_problems(spec, settings)` returns every problem, each naming its field
(`mounts[0].source: ...`), the form the rest of a refused spec's problems take. It only looks
(stat, realpath, access); it never reads a secret's contents into a message.

The rules (docs/integrations.md):
- A bind source must exist and lie under one of berthd's `allowed_roots` both as written and
  after resolving symbolic links (a link that leads out of the roots is an escape).
- Whatever the roots allow, berth never mounts `/`, the system trees (`/etc`, `/proc`, `/sys`,
  `/dev`, `/run`), the Podman socket, its own admin socket or its state dir; nor any directory
  that contains one of them, because mounting a parent exposes the child. Inside the state dir
  only `volumes/` and `models/` may be mounted.
- A model is the directory `<state_dir>/models/<name>` (it may be a link to a directory
  elsewhere, which must then obey the bind rules); it must exist, be a readable directory and
  hold at least one entry. Models and git checkouts are always read-only.
- Credential files (git `credentials_file`, `registry.auth_file`, `registry.password_file`)
  must be readable regular files.

The same checks run again when a replica's mounts are prepared
(`daemon.integrations.mounts`), against the resolved path that is then handed to Podman, so
a link swapped after apply cannot escape.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from config.errors import Problem
from config.settings import DaemonSettings
from config.spec import DeploymentSpec, Mount, MountType
from daemon.integrations.registry import registry_problems
from daemon.runtime.service import SYSTEM_URL

SYSTEM_TREES = tuple(Path(p) for p in ("/etc", "/proc", "/sys", "/dev", "/run"))
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
    problems += registry_problems(spec.registry)
    return [str(p) for p in problems]


def _mount_problems(where: str, mount: Mount, settings: DaemonSettings) -> list[Problem]:
    if mount.type is MountType.BIND:
        reason = bind_source_problem(mount.source, settings)
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
        if mount.credentials_file is not None:
            reason = readable_file_problem(mount.credentials_file)
            if reason:
                found.append(Problem(f"{where}.credentials_file", reason, mount.credentials_file))
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


def bind_source_problem(source: str, settings: DaemonSettings) -> str | None:
    """Why `source` may not be bind-mounted on this host, or None when it may."""
    if not settings.allows_bind_source(source):
        return f"not under berthd's allowed roots ({_roots(settings)})"
    path = Path(source)
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
    return protected_problem(resolved, settings)


def protected_problem(resolved: Path, settings: DaemonSettings) -> str | None:
    """Why this resolved path is one berth never mounts, whatever the roots say."""
    if resolved == Path("/"):
        return "is the host's root directory; berth never mounts it"
    for tree in SYSTEM_TREES:
        tree = _resolve(tree)
        if _within(resolved, tree) or _within(tree, resolved):
            return f"{resolved} is or holds the system directory {tree}; berth never mounts it"
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
            return f"{path} links to {resolved}, which {reason}"
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


def readable_file_problem(path: str) -> str | None:
    """Why `path` is not a file berthd can read (it is not opened: its contents are secret)."""
    file = Path(path)
    try:
        if not file.exists():
            return "does not exist on this host"
        if not file.is_file():
            return "is not a regular file"
    except OSError as exc:
        return f"cannot be read: {exc.strerror}"
    if not os.access(file, os.R_OK):
        return "is not readable by berthd"
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
