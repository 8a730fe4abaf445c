"""`[[mounts]]` and `[registry]`: what a replica sees besides its image, and how to pull it.

Mount sources by type: `bind` an absolute host path (berthd also checks it lies under its
`allowed_roots`), `volume` a Podman volume name (berthd checks it is one it made for this
deployment, or a shared one), `git` a repository URL (cloned by berthd, optionally at `ref`,
with `credentials_file` or `credentials`, a secret), `model` a model name whose target
defaults to `/models/<name>`.

What the parser alone can refuse, it does (what needs the host is
`daemon.integrations.mount_checks`'s):
- git URLs are network URLs, `https://`, `ssh://` or scp-like `user@host:path`, or
  `file://` (whose path berthd then holds to the bind rules); plain `http://` and `git://`
  (no TLS: anyone on the path could swap the code) and other transports (`ext::`) are not.
- Targets are absolute, normalised, unique within a spec, and never the container's own
  kernel and runtime files: `/`, anything under `/proc`, `/sys`, `/dev` or `/run/secrets`,
  nor `/etc/hosts`, `/etc/resolv.conf`, `/etc/hostname`, `/run/.containerenv` (Podman
  writes those; a mount over them makes the create fail, and a replica loop on it).
- Secrets never go in a spec (it is kept in history): a git URL with a password is refused.
"""

from __future__ import annotations

import posixpath
import re
from urllib.parse import urlsplit

from config.errors import WithheldValueError
from config.reader import Reader, as_bool, as_enum, as_str
from config.secret_ref import as_secret_ref
from config.spec import Mount, MountType, Registry

MODEL_ROOT = "/models"
_VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # Podman's volume name rule
_MODEL_PART = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_MODEL_NAME = re.compile(rf"{_MODEL_PART}(?:/{_MODEL_PART})*")
_GIT_REF = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/-]*")
_SCP_LIKE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*@[A-Za-z0-9][A-Za-z0-9.-]*:[^\s]+")
_GIT_SCHEMES = ("https", "ssh", "file")
_GIT_URL_RULE = (
    "must be a network git URL: https://, ssh:// or user@host:path "
    "(or file:// under berthd's allowed roots)"
)
# Under these a mount target would cover the container's kernel interfaces or its secrets.
FORBIDDEN_TARGET_TREES = ("/proc", "/sys", "/dev", "/run/secrets")
# Files Podman writes into every container.
FORBIDDEN_TARGETS = ("/etc/hosts", "/etc/resolv.conf", "/etc/hostname", "/run/.containerenv")
_BAD_PATH_TEXT = re.compile(r"[\x00-\x1f\x7f,]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def read_mounts(readers: list[Reader]) -> tuple[Mount, ...]:
    mounts: list[Mount] = []
    targets: dict[str, str] = {}
    for m in readers:
        mount = _read_mount(m)
        if mount is None:
            continue
        if mount.target in targets:
            m.problem("target", f"same target as {targets[mount.target]}", mount.target)
            continue
        targets[mount.target] = m.path
        mounts.append(mount)
    return tuple(mounts)


def _read_mount(m: Reader) -> Mount | None:
    kind = m.required("type", as_enum({x.value: x for x in MountType}))
    target = m.optional("target", _as_target)
    read_only = m.get("read_only", as_bool, True)
    ref = m.optional("ref", _as_git_ref)
    credentials_file = m.optional("credentials_file", as_abs_path)
    credentials = m.optional("credentials", as_secret_ref)
    if m.has("credentials_file") and m.has("credentials"):
        m.problem("credentials", "cannot be combined with credentials_file")
    if kind is None:
        m.optional("source", as_str)
        m.close()
        return None
    source = m.required("source", _SOURCE_CHECKS[kind])
    for key in ("ref", "credentials_file", "credentials"):
        if kind is not MountType.GIT and m.has(key):
            m.problem(key, "only for git mounts")
    if target is None and not m.has("target"):
        if kind is MountType.MODEL and source is not None:
            target = posixpath.join(MODEL_ROOT, source)
        elif kind is not MountType.MODEL:
            m.problem("target", "required")
    m.close()
    if target is None or source is None:
        return None
    return Mount(
        type=kind,
        target=target,
        source=source,
        read_only=read_only,
        ref=ref,
        credentials_file=credentials_file,
        credentials=credentials,
    )


def read_registry(r: Reader | None) -> Registry | None:
    """`auth_file`, or `username` with one of `password_file` and `password` (a secret)."""
    if r is None:
        return None
    auth_file = r.optional("auth_file", as_abs_path)
    username = r.optional("username", _as_username)
    password_file = r.optional("password_file", as_abs_path)
    password = r.optional("password", as_secret_ref)
    r.close()
    given = [k for k in ("password_file", "password") if r.has(k)]
    if r.has("auth_file"):
        if r.has("username") or given:
            r.problem(
                "auth_file",
                "cannot be combined with registry.username, registry.password_file "
                "or registry.password",
            )
    elif len(given) == 2:
        r.problem("password", "cannot be combined with registry.password_file")
    elif r.has("username") and not given:
        r.problem("password_file", "required with registry.username (or registry.password)")
    elif given and not r.has("username"):
        r.problem("username", f"required with registry.{given[0]}")
    elif not r.has("username"):
        r.problem("auth_file", "required (or registry.username and registry.password_file)")
    return Registry(
        auth_file=auth_file, username=username, password_file=password_file, password=password
    )


def as_abs_path(raw: object) -> str:
    """An absolute path, normalised ("/a/b/" -> "/a/b"); no "..", commas or control chars."""
    path = as_str(raw)
    if not path.startswith("/"):
        raise ValueError("must be an absolute path")
    if ".." in path.split("/"):
        raise ValueError('must not contain ".."')
    if _BAD_PATH_TEXT.search(path):
        raise ValueError("must not contain commas or control characters")
    normal = posixpath.normpath(path)
    # POSIX keeps a leading "//" as is; collapse it, it means nothing special on Linux.
    return "/" + normal.lstrip("/")


def _as_target(raw: object) -> str:
    path = as_abs_path(raw)
    if path == "/":
        raise ValueError("cannot mount over the container's root directory")
    for tree in FORBIDDEN_TARGET_TREES:
        if path == tree or path.startswith(tree + "/"):
            raise ValueError(f"cannot mount over {tree}, which the container runtime provides")
    if path in FORBIDDEN_TARGETS:
        raise ValueError(f"cannot mount over {path}, which the container runtime writes")
    return path


def _as_bind_source(raw: object) -> str:
    path = as_abs_path(raw)
    if path == "/":
        raise ValueError("cannot bind the host's root directory")
    return path


def _as_volume(raw: object) -> str:
    name = as_str(raw)
    if not _VOLUME_NAME.fullmatch(name):
        raise ValueError("must be a volume name: letters, digits, _ . -, starting alphanumeric")
    return name


def _as_model(raw: object) -> str:
    name = as_str(raw)
    if not _MODEL_NAME.fullmatch(name):
        raise ValueError(
            'must be a model name such as "tiny" or "org/model-7b": letters, digits, _ . -, '
            'parts separated by "/"'
        )
    return name


def _as_git_url(raw: object) -> str:
    url = as_str(raw)
    if not url or url.startswith("-") or any(c.isspace() for c in url):
        raise ValueError("must be a git URL without spaces")
    if _CONTROL.search(url):
        raise ValueError("must not contain control characters")
    if "://" not in url:
        if _SCP_LIKE.fullmatch(url) and "::" not in url:
            return url
        raise ValueError(_GIT_URL_RULE)
    parts = urlsplit(url)
    if parts.scheme not in _GIT_SCHEMES:
        raise ValueError(f"unsupported URL scheme {parts.scheme!r}; {_GIT_URL_RULE}")
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError("a file:// URL names a path on this host: file:///path")
        if not parts.path.startswith("/") or ".." in parts.path.split("/"):
            raise ValueError('a file:// URL needs an absolute path without ".."')
    elif not parts.hostname or parts.hostname.startswith("-"):
        raise ValueError("the URL has no host")
    if parts.password is not None:
        raise WithheldValueError(
            "must not hold a password (specs are kept in history); use credentials_file"
        )
    return url


def _as_git_ref(raw: object) -> str:
    ref = as_str(raw)
    if not _GIT_REF.fullmatch(ref) or ".." in ref or ref.endswith((".", "/", ".lock")):
        raise ValueError("must be a branch, tag or commit name")
    return ref


def _as_username(raw: object) -> str:
    name = as_str(raw)
    if not name or any(c.isspace() for c in name):
        raise ValueError("must be a non-empty user name without spaces")
    return name


_SOURCE_CHECKS = {
    MountType.BIND: _as_bind_source,
    MountType.VOLUME: _as_volume,
    MountType.GIT: _as_git_url,
    MountType.MODEL: _as_model,
}
