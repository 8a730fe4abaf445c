"""What a spec asks of the secret store, by field path.

- `secret_references(spec)`: every `{ secret = "NAME" }` in the spec with the path of the
  field that holds it (`env.HF_TOKEN`, `endpoint.auth.api_keys[0]`), found by walking the
  spec's dataclasses, so a field that takes a reference later is covered without a change
  here.
- `reference_problems`: the apply-time check (a host check, like mounts): each named
  secret exists. `env.HF_TOKEN.secret: no such secret "hf-token"`.
- `env_secret_names`: the secrets that go into a container's environment, the only ones
  that shape a replica; `secret_template_id` folds their fingerprints into the template
  id, so a new value makes the worker replace the replicas (and an old container is never
  mistaken for an up-to-date one). A spec without such references keeps its template id.
- `resolve_secret`: one referenced value (a registry password, git credentials), read
  where it is used, as `SecretText`.
- `resolve_env_secrets`: the values, read when a container is made, as `SecretText`,
  whose `repr` never shows them (a ContainerSpec in a log line or a traceback).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping

from config.reader import join_path
from config.secret_ref import SecretRef
from config.spec import DeploymentSpec
from daemon.secrets.store import NoSuchSecret, SecretError, SecretStore

TEMPLATE_ID_LENGTH = 12


class SecretText(str):
    """A secret's value as text: usable as the str it is, shown as '<secret>' by repr."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'<secret>'"


class SecretUnavailable(Exception):
    """A referenced secret cannot be read; the message names the field and the secret."""


def secret_references(spec: DeploymentSpec) -> list[tuple[str, SecretRef]]:
    """(field path, reference) for every secret the spec names, in field order."""
    found: list[tuple[str, SecretRef]] = []
    _walk(spec, "", found)
    return found


def _walk(value: object, path: str, found: list[tuple[str, SecretRef]]) -> None:
    if isinstance(value, SecretRef):
        found.append((path, value))
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            _walk(getattr(value, f.name), join_path(path, f.name), found)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str):
                _walk(item, join_path(path, key), found)
    elif isinstance(value, tuple | list):
        for i, item in enumerate(value):
            _walk(item, join_path(path, i), found)


def referenced_names(spec: DeploymentSpec) -> set[str]:
    return {ref.name for _, ref in secret_references(spec)}


def env_secret_names(spec: DeploymentSpec) -> list[str]:
    """The secrets whose values go into the containers' environment, sorted."""
    return sorted({v.name for v in spec.env.values() if isinstance(v, SecretRef)})


def reference_problems(spec: DeploymentSpec, store: SecretStore) -> list[str]:
    return [
        f'{path}.secret: no such secret "{ref.name}" (berth secret create {ref.name})'
        for path, ref in secret_references(spec)
        if store.info(ref.name) is None
    ]


def secret_template_id(base: str, spec: DeploymentSpec, store: SecretStore) -> str:
    """`base` (config.canonical.template_id) with the env secrets' fingerprints folded in."""
    names = env_secret_names(spec)
    if not names:
        return base
    versions = ",".join(f"{n}={store.fingerprint(n) or 'missing'}" for n in names)
    digest = hashlib.sha256(f"{base};{versions}".encode()).hexdigest()
    return digest[:TEMPLATE_ID_LENGTH]


async def resolve_secret(store: SecretStore | None, ref: SecretRef, path: str) -> SecretText:
    """The value of `ref`, the reference at field `path` (`registry.password`);
    SecretUnavailable names the field and the secret, never a value."""
    where = f"{path}.secret"
    if store is None:
        raise SecretUnavailable(f"{where}: this berthd keeps no secrets")
    try:
        raw = await store.read(ref.name)
    except NoSuchSecret:
        raise SecretUnavailable(f'{where}: no such secret "{ref.name}"') from None
    except SecretError as exc:
        raise SecretUnavailable(f'{where}: secret "{ref.name}" cannot be read: {exc}') from None
    return SecretText(raw.decode("utf-8", "replace"))


async def resolve_env_secrets(spec: DeploymentSpec, store: SecretStore) -> dict[str, SecretText]:
    """Secret name -> value for every secret the environment names; SecretUnavailable
    names the first field whose secret cannot be read."""
    values: dict[str, SecretText] = {}
    for key, value in spec.env.items():
        if isinstance(value, SecretRef) and value.name not in values:
            values[value.name] = await resolve_secret(store, value, join_path("env", key))
    return values
