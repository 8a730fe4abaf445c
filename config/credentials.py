"""The one checked opener of credential files a spec names (registry, git, TLS).

A spec may name files that berthd (root) reads and sends somewhere: `registry.password_file`,
`registry.auth_file`, a git mount's `credentials_file`, `[endpoint.tls] cert` and `key`.
Whoever can reach the admin socket writes specs, so without a fence a spec could make root
send `/root/.ssh/id_ed25519` to an SSH host of its choosing. The fence, checked on every
read (`read_credential`, `open_credential`):

- The path, as written (absolute, normalised: the parser's `as_abs_path`), lies under one of
  berthd's `credentials_roots` (berthd.toml; default `/etc/berth/credentials`). A root is the
  admin's choice and may itself be a symbolic link; nothing below it may be.
- Every component below the root is opened with `O_NOFOLLOW` from its parent's descriptor
  (`openat`), so a symbolic link anywhere on the way (a directory or the file) is refused,
  and the file read is the one the checks saw (no check-then-open race).
- The file is a regular file, owned by root or by berthd's own user, and neither group- nor
  other-writable (someone else able to rewrite it could swap the credentials).
- Refusals name the field and say what is wrong, but a path outside the roots gets the same
  words whether it exists or not: the admin API must not be a probe of the host's files.
  The contents never reach a message.

It lives in `config` (it only reads files, like berthd.toml's loader) so that every layer
that needs a credential (the daemon's integrations and runtime, the proxy's TLS) shares it.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

DEFAULT_CREDENTIALS_ROOTS: tuple[Path, ...] = (Path("/etc/berth/credentials"),)
MAX_CREDENTIAL_BYTES = 1024 * 1024  # a PEM chain or an auth.json; anything bigger is not one


class CredentialFileError(Exception):
    """A credential file refused; `str()` is `field: reason`, never the file's contents."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def outside_roots_reason(roots: Sequence[Path]) -> str:
    shown = ", ".join(str(r) for r in roots) or "none"
    return f"must lie under berthd's credentials_roots ({shown})"


def credential_path_problem(path: str, roots: Sequence[Path]) -> str | None:
    """Why `path` (as written) is not under a credentials root, without looking at the disk."""
    return None if _split_under_root(path, roots) is not None else outside_roots_reason(roots)


def read_credential(
    path: str, *, field: str, roots: Sequence[Path], max_bytes: int = MAX_CREDENTIAL_BYTES
) -> bytes:
    """The contents of the credential file at `path`, checked as the module docstring says."""
    with open_credential(path, field=field, roots=roots) as fd:
        size = os.fstat(fd).st_size
        if size > max_bytes:
            raise CredentialFileError(field, f"is larger than {max_bytes} bytes")
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:
                raise CredentialFileError(field, f"is larger than {max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


@contextmanager
def open_credential(path: str, *, field: str, roots: Sequence[Path]) -> Iterator[int]:
    """A read-only descriptor of the checked file, closed on exit.

    For APIs that want a path rather than bytes (`ssl.SSLContext.load_cert_chain`), pass
    `f"/proc/self/fd/{fd}"`: it reopens this very inode, not the path again.
    """
    split = _split_under_root(path, roots)
    if split is None:
        raise CredentialFileError(field, outside_roots_reason(roots))
    root, parts = split
    if not parts:
        raise CredentialFileError(field, "is a credentials root itself, not a file in it")
    fd = _walk(root, parts, field)
    try:
        _check_file(fd, field)
        yield fd
    finally:
        os.close(fd)


def _split_under_root(path: str, roots: Sequence[Path]) -> tuple[str, list[str]] | None:
    """(the root's resolved path, the components below it), or None when under none."""
    if not path.startswith("/") or "\x00" in path:
        return None
    normal = posixpath.normpath(path)
    if ".." in normal.split("/"):
        return None
    for root in roots:
        # The root as written, or as it resolves: either way the file is in the same place.
        for written in dict.fromkeys((posixpath.normpath(str(root)), os.path.realpath(root))):
            if normal == written or normal.startswith(written.rstrip("/") + "/"):
                rest = normal[len(written) :].strip("/")
                return os.path.realpath(root), [p for p in rest.split("/") if p]
    return None


def _walk(root: str, parts: list[str], field: str) -> int:
    """Open root, then each component below it without following links; the file's fd."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(root, flags | os.O_DIRECTORY)
    except OSError:
        raise CredentialFileError(field, "does not exist on this host") from None
    try:
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            # O_NONBLOCK: a FIFO planted under the root must not hang the open.
            more = os.O_NONBLOCK if last else os.O_DIRECTORY
            try:
                child = os.open(part, flags | more, dir_fd=fd)
            except OSError as exc:
                raise CredentialFileError(field, _open_failure(exc, fd, part, last)) from None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_failure(exc: OSError, dir_fd: int, part: str, last: bool) -> str:
    try:
        st = os.stat(part, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        st = None
    if st is not None and stat.S_ISLNK(st.st_mode):
        return "is or goes through a symbolic link; credential files are opened without links"
    if exc.errno in (errno.ENOENT,):
        return "does not exist on this host"
    if exc.errno == errno.ENOTDIR:
        return "does not exist on this host (a part of its path is not a directory)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "is not readable by berthd"
    return f"cannot be opened ({exc.strerror})"


def _check_file(fd: int, field: str) -> None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise CredentialFileError(field, "is not a regular file")
    if st.st_uid not in (0, os.geteuid()):
        raise CredentialFileError(
            field, f"must be owned by root or by berthd's user (owned by uid {st.st_uid})"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise CredentialFileError(
            field, f"must not be writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
        )
