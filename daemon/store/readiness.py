"""Each replica's last readiness verdict (`replica_readiness`), for a restarted berthd.

Plain functions over a `Store`, called through `StoreAccess.call` like its own methods. A
verdict is written only when it changes (the prober's ready / not-ready transitions, a
ready replica's container found stopped), never per probe: a row is a few bytes once per
change. It names the container and the container template it was judged for, so the next
berthd trusts it only for that very container (`Verdict.holds_for`); everything else is
probed afresh. A replica's row goes with the replica (`Store.delete_replica`).
"""

from __future__ import annotations

from dataclasses import dataclass

from daemon.store.database import Store


@dataclass(frozen=True)
class Verdict:
    replica_id: str
    deployment_id: str
    container_id: str
    template_id: str
    ready: bool
    since: str  # RFC 3339 UTC: when the verdict was reached

    def holds_for(self, container_id: str, template_id: str) -> bool:
        """Whether this verdict was reached about this container, made from this template."""
        return self.container_id == container_id and self.template_id == template_id


def save_verdict(
    store: Store,
    deployment_id: str,
    replica_id: str,
    container_id: str,
    template_id: str,
    *,
    ready: bool,
) -> Verdict:
    with store._write():
        verdict = Verdict(
            replica_id, deployment_id, container_id, template_id, ready, store._stamp()
        )
        store._db.execute(
            "INSERT OR REPLACE INTO replica_readiness "
            "(replica_id, deployment_id, container_id, template_id, ready, since) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [replica_id, deployment_id, container_id, template_id, int(ready), verdict.since],
        )
    return verdict


def list_verdicts(store: Store, deployment_id: str) -> dict[str, Verdict]:
    """replica id -> its last verdict, for one deployment."""
    rows = store._db.query(
        "SELECT * FROM replica_readiness WHERE deployment_id = ?", [deployment_id]
    )
    return {r["replica_id"]: Verdict(**{**r, "ready": bool(r["ready"])}) for r in rows}
