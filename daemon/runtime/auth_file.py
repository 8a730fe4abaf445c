"""containers-auth.json, the file `podman login` writes: read it, and pick an image's entry.

The one reader of the file. `daemon.integrations.registry` reads it (through the checked
opener, `config.credentials`: under `credentials_roots`, no symbolic links, root's and not
writable by others) at apply time, so a spec whose file cannot be read is refused with the
problem named by its field, and again before each pull; the parsed `auths` travel in the
`RegistryAuth`, and `daemon.runtime.pull` picks the image's entry from them for the
X-Registry-Auth header. The file is never opened by path anywhere else.

Invariants:
- The file's contents never reach a message: `AuthFileError` says what is wrong with the file
  ("is not a containers-auth.json file (not JSON)"), never what it holds, and the JSON
  decoder's own message (which quotes the text) is dropped. Callers prefix the field or path.
- An image's entry is the one Podman would use: the longest key that is the image's registry,
  or the registry and a leading part of its path ("quay.io/org"); keys written by older tools
  ("https://index.docker.io/v1/", "quay.io/org/") match too. A short name is docker.io's.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from config.credentials import CredentialFileError, read_credential


class AuthFileError(Exception):
    """The auth file cannot be used; the message is the reason, without the path."""


def read_auths(path: str, *, roots: Sequence[Path]) -> dict[str, Any]:
    """The `auths` table of the containers-auth.json at `path` (under one of `roots`)."""
    try:
        data = read_credential(path, field="auth_file", roots=roots)
    except CredentialFileError as exc:
        raise AuthFileError(exc.reason) from None
    try:
        body = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):  # their text quotes the file; nesting: not auth.json
        raise AuthFileError("is not a containers-auth.json file (not JSON)") from None
    auths = body.get("auths") if isinstance(body, dict) else None
    if not isinstance(auths, dict):
        raise AuthFileError('is not a containers-auth.json file (no "auths" object)')
    return auths


def registry_of(image: str) -> tuple[str, str]:
    """(registry, registry/path) of an image reference; short names count as docker.io."""
    name = image.split("@", 1)[0]
    if name.rfind(":") > name.rfind("/"):
        name = name[: name.rfind(":")]
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        return first, name
    return "docker.io", f"docker.io/{name}"


def credential_for(auths: Mapping[str, object], image: str) -> dict[str, str] | None:
    """The credential for `image`'s registry ({"username", "password"} or {"identitytoken"}),
    or None when no entry matches (or the matching ones are unusable): an anonymous pull."""
    registry, repository = registry_of(image)
    aliases = {registry}
    if registry == "docker.io":
        aliases |= {"index.docker.io", "registry-1.docker.io"}
    best: tuple[int, dict[str, str]] | None = None
    for key, entry in auths.items():
        if not isinstance(entry, dict):
            continue
        bare = key.split("://", 1)[-1].rstrip("/").removesuffix("/v1")
        host, _, prefix = bare.partition("/")
        if host not in aliases:
            continue
        if prefix and not f"{repository}/".startswith(f"{registry}/{prefix}/"):
            continue
        credential = _credential(entry)
        if credential is not None and (best is None or len(bare) > best[0]):
            best = (len(bare), credential)
    return best[1] if best else None


def _credential(entry: dict[str, Any]) -> dict[str, str] | None:
    if isinstance(entry.get("identitytoken"), str) and entry["identitytoken"]:
        return {"identitytoken": entry["identitytoken"]}
    try:
        decoded = base64.b64decode(entry.get("auth") or "", validate=True).decode()
    except (ValueError, TypeError):
        return None
    username, sep, password = decoded.partition(":")
    return {"username": username, "password": password} if sep else None
