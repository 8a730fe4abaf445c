"""A deployment's endpoint credentials: the spec's `[endpoint.auth]` and its `berth keys`,
made into the proxy's `Credentials` (hashes only).

- A deployment is protected when its spec has `[endpoint.auth]` (an empty table will do);
  otherwise its endpoint is open (`None`), whatever keys it has. The spec alone says
  whether an endpoint is protected (its history shows it, and the bind default follows
  it), and a revoke can never open one: revoking the last key of a protected endpoint
  leaves it answering 401 to everyone. `berth keys create` is refused for a spec without
  `[endpoint.auth]` (`daemon.api.key_routes`).
- The set is built from the store's key hashes (`daemon.store.keys`), each spec API key's
  secret hashed (`proxy.auth.hash_key`), each basic user's secret by scrypt in a thread;
  the values are dropped once hashed. A built set is kept per deployment with what it was
  made from (the key hashes, the auth table, the secrets' fingerprints), so a worker round
  costs a comparison, and scrypt runs only when a password changes.
- A secret that cannot be read (removed since the apply, which checked it) leaves its
  credential out, said once in the log: the endpoint stays protected, never open.
- Keys are read from the store once per deployment and again after `forget_keys` (the
  admin API's create and revoke), not on every round.
- `new_key()`: a key for `berth keys create`: `bk_` and 32 random bytes (urlsafe base64),
  shown once; only its hash is stored.
"""

from __future__ import annotations

import logging
import secrets as random
from dataclasses import dataclass
from typing import Protocol

import trio

from config.spec import EndpointAuth
from daemon.store.access import StoreAccess
from daemon.store.keys import key_hashes
from proxy.auth import Credentials, PasswordHash, hash_key, hash_password

log = logging.getLogger("berthd")

KEY_PREFIX = "bk_"
KEY_BYTES = 32
# What reading a secret raises when it cannot be had (`daemon.secrets.store`: NoSuchSecret
# is a LookupError, a value refused a ValueError, a file that cannot be read an OSError).
READ_FAILURES = (LookupError, ValueError, OSError)


class SecretReader(Protocol):
    """What is read of the secret store (`daemon.secrets.store.SecretStore`)."""

    async def read(self, name: str) -> bytes: ...

    def fingerprint(self, name: str) -> str | None: ...


@dataclass(frozen=True)
class NewKey:
    key_id: str
    key: str  # shown once, to the caller of `berth keys create`
    key_hash: str  # hex SHA-256: what is stored


def new_key() -> NewKey:
    key = KEY_PREFIX + random.token_urlsafe(KEY_BYTES)
    return NewKey("k" + random.token_hex(5), key, hash_key(key.encode()).hex())


@dataclass(frozen=True)
class _Built:
    inputs: tuple[object, ...]
    credentials: Credentials


class EndpointCredentials:
    """Builds and keeps each deployment's `Credentials` (see the module docstring)."""

    def __init__(
        self,
        store: StoreAccess,
        secrets: SecretReader | None,
        read_failures: tuple[type[Exception], ...] = READ_FAILURES,
    ) -> None:
        self._store = store
        self._secrets = secrets
        self._read_failures = read_failures  # what `secrets.read` raises for "cannot"
        self._keys: dict[str, tuple[tuple[str, str], ...]] = {}
        self._built: dict[str, _Built] = {}
        self._passwords: dict[tuple[str, str], tuple[str | None, PasswordHash]] = {}
        self._warned: set[str] = set()
        self._generation: dict[str, int] = {}  # bumped by forget_keys

    def __repr__(self) -> str:
        return f"<EndpointCredentials deployments={len(self._built)}>"

    def forget_keys(self, name: str) -> None:
        """The deployment's keys changed: read them again on the next `credentials`."""
        self._keys.pop(name, None)
        self._generation[name] = self._generation.get(name, 0) + 1

    async def credentials(self, name: str, auth: EndpointAuth | None) -> Credentials | None:
        """The deployment's credential set; None: its endpoint is open. A set built while
        the keys changed (a revoke during the store read) is built again, never returned."""
        while True:
            generation = self._generation.get(name, 0)
            creds = await self._build(name, auth)
            if self._generation.get(name, 0) == generation:
                return creds

    async def _build(self, name: str, auth: EndpointAuth | None) -> Credentials | None:
        if auth is None:
            self._built.pop(name, None)
            return None
        keys = self._keys.get(name)
        if keys is None:
            keys = self._keys[name] = tuple(await self._store.call(key_hashes, name))
        inputs = (keys, auth, self._fingerprints(auth))
        built = self._built.get(name)
        if built is not None and built.inputs == inputs:
            return built.credentials
        hashes = {f"key:{kid}": bytes.fromhex(h) for kid, h in keys}
        for ref in auth.api_keys:
            value = await self._read(name, ref.name)
            if value is not None:
                hashes[f"secret:{ref.name}"] = hash_key(value)
        users: dict[str, PasswordHash] = {}
        for user in auth.basic:
            hashed = await self._password(name, user.password.name)
            if hashed is not None:
                users[user.user] = hashed
        creds = Credentials(keys=hashes, users=users, forward_auth=auth.forward_auth)
        self._built[name] = _Built(inputs, creds)
        return creds

    def _fingerprints(self, auth: EndpointAuth) -> tuple[str | None, ...]:
        names = [r.name for r in auth.api_keys] + [u.password.name for u in auth.basic]
        store = self._secrets
        return tuple(store.fingerprint(n) if store else None for n in names)

    async def _password(self, deployment: str, secret: str) -> PasswordHash | None:
        """scrypt of the secret's value, kept while its fingerprint stays the same."""
        fingerprint = self._secrets.fingerprint(secret) if self._secrets else None
        kept = self._passwords.get((deployment, secret))
        if kept is not None and kept[0] == fingerprint and fingerprint is not None:
            return kept[1]
        value = await self._read(deployment, secret)
        if value is None:
            return None
        hashed = await trio.to_thread.run_sync(hash_password, value)
        self._passwords[(deployment, secret)] = (fingerprint, hashed)
        return hashed

    async def _read(self, deployment: str, secret: str) -> bytes | None:
        if self._secrets is None:
            return None
        try:
            value = await self._secrets.read(secret)
        except self._read_failures as exc:
            said = f"{deployment}/{secret}"
            if said not in self._warned:
                self._warned.add(said)
                log.warning(
                    "endpoint %s: secret %r cannot be read (%s): its credential is left out",
                    deployment,
                    secret,
                    type(exc).__name__,
                )
            return None
        self._warned.discard(f"{deployment}/{secret}")
        return value
