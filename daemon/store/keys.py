"""The endpoint keys table (`berth keys`): each key's id, name, hash and creation time.

Plain functions over a `Store`, called through `StoreAccess.call` like its own methods;
they use the store's connection and write transaction, so they keep its invariants (one
thread, IMMEDIATE transactions). Only a key's hash is ever written (its SHA-256, made by
the caller): a copy of berth.db lets nobody call an endpoint. A revoked key is deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from daemon.store.database import Store, UnknownDeployment


@dataclass(frozen=True)
class EndpointKey:
    key_id: str
    deployment: str  # the deployment's name
    name: str  # a label the user gave ("" when none)
    created_at: str

    def to_json(self) -> dict[str, object]:
        return {"id": self.key_id, "name": self.name, "created_at": self.created_at}


def add_key(store: Store, deployment: str, key_id: str, name: str, key_hash: str) -> EndpointKey:
    """Record a new key of `deployment` (UnknownDeployment when it has none or was removed)."""
    with store._write():
        row = store._deployment_row(deployment)
        if row is None or row["removed_at"] is not None:
            raise UnknownDeployment(f"no deployment named {deployment!r}")
        created = store._stamp()
        store._db.execute(
            "INSERT INTO endpoint_keys (key_id, deployment_id, name, key_hash, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            [key_id, row["deployment_id"], name, key_hash, created],
        )
    return EndpointKey(key_id, deployment, name, created)


def list_keys(store: Store, deployment: str) -> list[EndpointKey]:
    return [
        EndpointKey(r["key_id"], deployment, r["name"], r["created_at"])
        for r in _rows(store, "k.key_id, k.name, k.created_at", deployment)
    ]


def key_hashes(store: Store, deployment: str) -> list[tuple[str, str]]:
    """(key id, hex SHA-256) of each key of `deployment`, by id: what its endpoint accepts."""
    return [(r["key_id"], r["key_hash"]) for r in _rows(store, "k.key_id, k.key_hash", deployment)]


def revoke_key(store: Store, deployment: str, key_id: str) -> EndpointKey | None:
    """Delete the key; None when `deployment` has no key `key_id`."""
    with store._write():
        found = _rows(store, "k.key_id, k.name, k.created_at", deployment)
        hit = next((r for r in found if r["key_id"] == key_id), None)
        if hit is None:
            return None
        store._db.execute("DELETE FROM endpoint_keys WHERE key_id = ?", [key_id])
    return EndpointKey(hit["key_id"], deployment, hit["name"], hit["created_at"])


def _rows(store: Store, columns: str, deployment: str) -> list[dict[str, Any]]:
    sql = (
        f"SELECT {columns} FROM endpoint_keys k JOIN deployments d USING (deployment_id) "
        "WHERE d.name = ? ORDER BY k.created_at, k.key_id"
    )
    return list(store._db.query(sql, [deployment]))
