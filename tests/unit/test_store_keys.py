"""daemon.store.keys on a real SQLite file: endpoint keys stored as hashes only."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.store.database import Store, UnknownDeployment
from daemon.store.keys import add_key, key_hashes, list_keys, revoke_key

HASH_A = "a" * 64
HASH_B = "b" * 64


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "berth.db")
    s.apply("web", "0" * 12, "text", "{}")
    s.apply("other", "1" * 12, "text", "{}")
    return s


def test_keys_are_added_listed_and_revoked_per_deployment(store: Store) -> None:
    a = add_key(store, "web", "k1", "ci", HASH_A)
    add_key(store, "other", "k2", "", HASH_B)
    assert [k.to_json() for k in list_keys(store, "web")] == [
        {"id": "k1", "name": "ci", "created_at": a.created_at}
    ]
    assert key_hashes(store, "web") == [("k1", HASH_A)]
    assert revoke_key(store, "web", "k2") is None  # another deployment's key
    assert revoke_key(store, "web", "k1") == a
    assert key_hashes(store, "web") == [] and key_hashes(store, "other") == [("k2", HASH_B)]


def test_a_removed_or_unknown_deployment_gets_no_key(store: Store) -> None:
    with pytest.raises(UnknownDeployment):
        add_key(store, "nope", "k1", "", HASH_A)
    store.mark_removed("web")
    with pytest.raises(UnknownDeployment):
        add_key(store, "web", "k1", "", HASH_A)


def test_only_the_hash_is_in_the_file(tmp_path: Path, store: Store) -> None:
    add_key(store, "web", "k1", "", HASH_A)
    store.close()
    reopened = Store(tmp_path / "berth.db")  # the migration is not run twice
    assert key_hashes(reopened, "web") == [("k1", HASH_A)]
    columns = [r[1] for r in reopened._db.execute("PRAGMA table_info(endpoint_keys)").fetchall()]
    assert columns == ["key_id", "deployment_id", "name", "key_hash", "created_at"]
