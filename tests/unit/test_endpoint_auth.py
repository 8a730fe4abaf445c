"""daemon.reconcile.endpoint_auth: a deployment's credential set from its spec's
[endpoint.auth] (secrets) and its berth keys (a real SQLite store), kept between rounds."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from config.secret_ref import SecretRef
from config.spec import BasicUser, EndpointAuth
from daemon.reconcile.endpoint_auth import KEY_PREFIX, EndpointCredentials, new_key
from daemon.store.access import StoreAccess
from daemon.store.database import Store
from daemon.store.keys import add_key, revoke_key
from proxy.auth import Allowed, CheckPassword, Guard, Refused, hash_key


class Secrets:
    """A stand-in secret store: values in a dict, reads counted."""

    def __init__(self, **values: bytes) -> None:
        self.values = values
        self.reads = 0

    async def read(self, name: str) -> bytes:
        self.reads += 1
        if name not in self.values:
            raise LookupError(name)
        return self.values[name]

    def fingerprint(self, name: str) -> str | None:
        value = self.values.get(name)
        return None if value is None else hash_key(value).hex()[:8]


AUTH = EndpointAuth(
    api_keys=(SecretRef("team"), SecretRef("gone")),
    basic=(BasicUser("alice", SecretRef("alice-pw")),),
)


def run_with_store(tmp_path: Path, body: Callable[[StoreAccess], Awaitable[None]]) -> None:
    store = Store(tmp_path / "berth.db")
    store.apply("web", "0" * 12, "text", "{}")

    async def main() -> None:
        await body(StoreAccess(store))

    trio.run(main)
    store.close()


def test_new_keys_are_high_entropy_and_stored_as_their_hash() -> None:
    a, b = new_key(), new_key()
    assert a.key.startswith(KEY_PREFIX) and len(a.key) == len(KEY_PREFIX) + 43
    assert a.key != b.key and a.key_id != b.key_id
    assert a.key_hash == hash_key(a.key.encode()).hex() and a.key not in a.key_hash


def test_open_without_auth_or_keys(tmp_path: Path) -> None:
    async def body(access: StoreAccess) -> None:
        assert await EndpointCredentials(access, Secrets()).credentials("web", None) is None

    run_with_store(tmp_path, body)


def test_keys_count_only_with_auth_and_a_revoke_never_opens(tmp_path: Path) -> None:
    async def body(access: StoreAccess) -> None:
        made = new_key()
        await access.call(add_key, "web", made.key_id, "", made.key_hash)
        source = EndpointCredentials(access, Secrets())
        assert await source.credentials("web", None) is None  # no [endpoint.auth]: open
        creds = await source.credentials("web", EndpointAuth())
        assert creds is not None
        assert creds.bearer(made.key.encode()) == f"key:{made.key_id}"
        await access.call(revoke_key, "web", made.key_id)
        assert await source.credentials("web", EndpointAuth()) is creds  # kept until told
        source.forget_keys("web")
        after = await source.credentials("web", EndpointAuth())
        assert after is not None and after.keys == {}  # protected still: 401 to everyone
        assert Guard(after).check([(b"x-api-key", made.key.encode())]) == Refused(True)

    run_with_store(tmp_path, body)


def test_spec_secrets_are_hashed_and_a_missing_one_left_out(tmp_path: Path) -> None:
    async def body(access: StoreAccess) -> None:
        secrets = Secrets(team=b"team-secret", **{"alice-pw": b"pw"})
        source = EndpointCredentials(access, secrets)
        creds = await source.credentials("web", AUTH)
        assert creds is not None and set(creds.keys) == {"secret:team"}  # "gone" left out
        assert creds.bearer(b"team-secret") == "secret:team"
        assert b"team-secret" not in repr(creds).encode()
        g = Guard(creds)
        header = [(b"Authorization", b"Basic " + base64.b64encode(b"alice:pw"))]
        pending = g.check(header)
        assert isinstance(pending, CheckPassword)
        assert await g.verify(pending) == Allowed("user:alice")
        assert g.check([(b"x-api-key", b"gone")]) == Refused(presented=True)
        # The next round costs no read and no scrypt: same inputs, the same set.
        reads = secrets.reads
        assert await source.credentials("web", AUTH) is creds and secrets.reads == reads
        # A new password value: a new set (and a new scrypt).
        secrets.values["alice-pw"] = b"new"
        again = await source.credentials("web", AUTH)
        assert again is not creds and again is not None
        assert again.users["alice"] != creds.users["alice"]

    run_with_store(tmp_path, body)
