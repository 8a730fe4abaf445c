"""Private registries: a spec's `[registry]` -> the `RegistryAuth` a pull carries.

Two forms (docs/integrations.md): `auth_file`, the containers-auth.json that `podman login`
writes (the entry for the image's registry is picked when pulling), or `username` plus
`password_file`, a file that holds only the password (one trailing newline is ignored), or
plus `password = { secret = "NAME" }`, whose value the caller reads from the secret store
(async, `daemon.secrets.references.resolve_secret`) and hands in as `password`; the same
rules apply to it as to the file's contents.

Invariants:
- A secret is read only to be handed to the runtime; it never appears in a message, a log
  line, an event or a repr (`RegistryAuth.__repr__` hides the password).
- The apply-time checks (`registry_problems`) look at the files without showing them, so a
  spec whose credentials cannot be read is refused before any replica is planned. The auth
  file is parsed by `daemon.runtime.auth_file`, the one parser of it; both files are opened
  only through `config.credentials` (under `credentials_roots`, no symbolic links, owned by
  root or berthd, not writable by others).
- Whether a registry may be reached without TLS is the host's decision, made where Podman
  makes it (an `insecure = true` entry in registries.conf), never a spec's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from config.credentials import CredentialFileError, read_credential
from config.errors import Problem
from config.spec import Registry
from daemon.runtime.auth_file import AuthFileError, read_auths
from daemon.runtime.interface import RegistryAuth


class RegistryCredentialsError(Exception):
    """The spec's registry credentials cannot be read; the message names the field."""


def registry_auth(
    registry: Registry | None, roots: Sequence[Path], password: str | None = None
) -> RegistryAuth | None:
    """The credentials to pull with, or None for an anonymous pull. Reads the files, which
    must lie under berthd's `credentials_roots` (`roots`; `config.credentials`). `password`
    is the value of the secret `registry.password` names, read by the caller."""
    if registry is None:
        return None
    if registry.auth_file is not None:
        try:  # refuse an unreadable file now, not at the first pull
            auths = read_auths(registry.auth_file, roots=roots)
        except AuthFileError as exc:
            raise RegistryCredentialsError(f"registry.auth_file: {exc}") from None
        return RegistryAuth(auth_file=registry.auth_file, auths=auths)
    if registry.username is None:
        return None  # the parser refuses this; nothing to authenticate with
    if registry.password is not None:
        field = "registry.password"
        if password is None:
            raise RegistryCredentialsError(f"{field}: the secret's value was not read")
        return RegistryAuth(username=registry.username, password=_password_text(password, field))
    if registry.password_file is None:
        return None  # the parser refuses this
    password = _read_password(registry.password_file, roots)
    return RegistryAuth(username=registry.username, password=password)


def registry_problems(registry: Registry | None, roots: Sequence[Path]) -> list[Problem]:
    """What is wrong with the `[registry]` credential files on this host (apply-time)."""
    if registry is None or registry.password is not None:
        return []  # a secret: whether it exists is the secret references' check
    try:
        registry_auth(registry, roots)
    except RegistryCredentialsError as exc:
        field, _, reason = str(exc).partition(": ")
        value = registry.auth_file if field == "registry.auth_file" else registry.password_file
        return [Problem(field, reason, value)]
    return []


def _read_password(path: str, roots: Sequence[Path]) -> str:
    field = "registry.password_file"
    try:
        data = read_credential(path, field=field, roots=roots)
    except CredentialFileError as exc:
        raise RegistryCredentialsError(str(exc)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise RegistryCredentialsError(f"{field}: is not UTF-8 text") from None
    return _password_text(text, field)


def _password_text(text: str, field: str) -> str:
    """The password alone: one trailing newline dropped; never shown in a message."""
    password = text.removesuffix("\n").removesuffix("\r")
    if not password:
        raise RegistryCredentialsError(f"{field}: is empty")
    if "\n" in password:
        raise RegistryCredentialsError(f"{field}: must hold the password alone, on one line")
    return password
