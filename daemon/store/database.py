"""berthd's memory: deployments, their spec revisions, replica records, events and per-minute
metric rollups, in SQLite.

Invariants:
- A deployment's `deployment_id` is minted once, when its name is first applied, and kept for
  the name's whole life: `rm` only sets `removed_at`, and applying the name again clears it.
- Revisions are numbered 1, 2, 3... per deployment and never deleted or renumbered. At most
  one is active (a partial unique index says so); applying makes the new one active.
- Re-applying the active spec of a live deployment writes nothing ("unchanged").
- Every multi-row change runs in one transaction.
- Replica rows are berthd's notes about replicas; the containers are the source of truth for
  what runs, so the daemon may overwrite or drop these freely.
- Metric rollups are keyed by (deployment, replica, minute): writing a minute again replaces
  it, so a retried write never doubles a row. They are pruned by age, never by deployment.

This is the only module that imports sqlite-utils. It is synchronous: the daemon calls it
through `trio.to_thread.run_sync` and serialises those calls, so one connection (opened with
`check_same_thread=False`) serves every worker thread. The file is in WAL mode, so a reader
(`sqlite3 state.db`) never blocks berthd.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from sqlite_utils import Database

from daemon.store.migrations import MIGRATIONS
from daemon.store.permissions import create_database_file, tighten_database_files

log = logging.getLogger("berthd.store")


def utc_now() -> datetime:
    return datetime.now(UTC)


def rfc3339(moment: datetime) -> str:
    """`2024-05-01T12:00:00.123Z`: UTC, millisecond precision, so text order is time order."""
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: the store needs an aware one")
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class StoreError(Exception):
    """The state database cannot be used as asked."""


class RevisionChanged(StoreError):
    """A read-modify-write found the deployment's active revision changed since it was read
    (a user applied meanwhile): nothing was written; act on the new state instead."""


class UnknownDeployment(StoreError, LookupError):
    """No deployment (or no such revision of it) by that name."""


class RevisionStatus(StrEnum):
    ACTIVE = "active"
    SUPERSEDED = "superseded"
    FAILED = "failed"


ApplyOutcome = Literal["created", "updated", "unchanged"]


@dataclass(frozen=True)
class ApplyResult:
    name: str
    deployment_id: str
    revision: int
    spec_id: str
    outcome: ApplyOutcome


@dataclass(frozen=True)
class Deployment:
    deployment_id: str
    name: str
    created_at: str
    removed_at: str | None
    pinned_replicas: int | None

    @property
    def removed(self) -> bool:
        return self.removed_at is not None


@dataclass(frozen=True)
class Revision:
    deployment_id: str
    revision: int
    spec_id: str
    spec_text: str
    spec_json: str
    created_at: str
    active: bool
    status: str
    reason: str | None


@dataclass(frozen=True)
class ReplicaRecord:
    replica_id: str
    deployment_id: str
    container_id: str | None
    spec_id: str
    host_port: int | None
    state: str
    restarts: int = 0
    last_exit_reason: str | None = None
    created_at: str = ""  # filled by the store
    updated_at: str = ""  # filled by the store


@dataclass(frozen=True)
class Event:
    id: int
    time: str
    deployment: str | None
    replica: str | None
    kind: str
    message: str
    uid: int | None = None  # the admin caller who caused it (SO_PEERCRED); None: berthd


@dataclass(frozen=True)
class MetricRollup:
    """One minute of averaged samples (daemon/metrics/sampler.py): a replica (`replica` = its id), a
    deployment as a whole (`replica` = ""), the host (`deployment` = "", `replica` = "") or
    one host GPU (`deployment` = "", `replica` = "gpu:N"). None: nothing was measured."""

    deployment: str
    replica: str
    minute: str  # RFC 3339 UTC, the minute's start
    samples: int
    cpu_percent: float | None = None
    memory_bytes: float | None = None
    memory_limit_bytes: float | None = None
    gpu_utilization: float | None = None
    gpu_memory_bytes: float | None = None
    gpu_memory_total_bytes: float | None = None
    gpu_temperature_c: float | None = None
    gpu_power_w: float | None = None
    requests_per_s: float | None = None
    in_flight: float | None = None
    latency_p50: float | None = None
    latency_p95: float | None = None
    # A deployment's own row only: requests in the endpoint's queue, and the replica count
    # its worker wanted (pinned, autoscaled or the spec's).
    queued: float | None = None
    desired_replicas: float | None = None


class Store:
    def __init__(self, path: Path, *, now: Callable[[], datetime] = utc_now) -> None:
        self._path = path
        self._now = now
        create_database_file(path)  # 0600 from the start, whatever the umask
        conn = sqlite3.connect(str(path), check_same_thread=False)
        try:
            self._db = Database(conn, execute_plugins=False)
            self._db.enable_wal()
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.execute("PRAGMA busy_timeout = 5000")
            self._migrate()
        except BaseException:
            conn.close()
            raise
        # A file made 0644 by an older berthd (or by sqlite3 by hand): 0600 now, said once.
        for note in tighten_database_files(path):
            log.warning("%s", note)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Store {str(self._path)!r} schema_version={self.schema_version}>"

    @property
    def schema_version(self) -> int:
        version: int = self._db.execute("PRAGMA user_version").fetchone()[0]
        return version

    def _migrate(self) -> None:
        current = self.schema_version
        if current > len(MIGRATIONS):
            raise StoreError(
                f"{self._path}: schema version {current} is newer than this berthd knows "
                f"({len(MIGRATIONS)}); upgrade berthd or point it at another state dir"
            )
        for version in range(current, len(MIGRATIONS)):
            with self._db.atomic():
                self._db.executescript(MIGRATIONS[version])
                # user_version lives in the file header, so it commits (or not) with the DDL.
                self._db.execute(f"PRAGMA user_version = {version + 1}")

    def _stamp(self) -> str:
        return rfc3339(self._now())

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        """A write transaction that takes SQLite's write lock at BEGIN (IMMEDIATE), so what
        it reads cannot change under it before it writes, whoever else opens the file."""
        if self._db.conn.in_transaction:
            with self._db.atomic():  # nested: a savepoint
                yield
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.conn.rollback()
            raise
        self._db.conn.commit()

    # -- deployments and revisions ------------------------------------------------------

    def apply(
        self,
        name: str,
        spec_id: str,
        spec_text: str,
        spec_json: str,
        *,
        because: str | None = None,
    ) -> ApplyResult:
        """A new active revision, or "unchanged" for the active spec again. `because`: a
        new revision even for the same spec, saying why (a secret its replicas use has a
        new value: `berth history` shows the reason)."""
        with self._write():
            row = self._deployment_row(name)
            outcome: ApplyOutcome
            if row is None:
                deployment_id = uuid.uuid4().hex
                self._db.table("deployments").insert(
                    {
                        "deployment_id": deployment_id,
                        "name": name,
                        "created_at": self._stamp(),
                        "removed_at": None,
                        "pinned_replicas": None,
                    }
                )
                outcome = "created"
            else:
                deployment_id = row["deployment_id"]
                removed = row["removed_at"] is not None
                active = self._active_row(deployment_id)
                same = active is not None and active["spec_id"] == spec_id
                if not removed and active is not None and same and because is None:
                    return ApplyResult(
                        name, deployment_id, active["revision"], spec_id, "unchanged"
                    )
                if removed:
                    self._db.table("deployments").update(deployment_id, {"removed_at": None})
                outcome = "created" if removed else "updated"
                # A failed revision keeps saying "failed" once it is no longer active.
                self._db.execute(
                    "UPDATE revisions SET active = 0,"
                    " status = CASE WHEN status = ? THEN ? ELSE status END"
                    " WHERE deployment_id = ? AND active = 1",
                    [RevisionStatus.ACTIVE, RevisionStatus.SUPERSEDED, deployment_id],
                )
            number: int = self._db.execute(
                "SELECT COALESCE(MAX(revision), 0) + 1 FROM revisions WHERE deployment_id = ?",
                [deployment_id],
            ).fetchone()[0]
            self._db.table("revisions").insert(
                {
                    "deployment_id": deployment_id,
                    "revision": number,
                    "spec_id": spec_id,
                    "spec_text": spec_text,
                    "spec_json": spec_json,
                    "created_at": self._stamp(),
                    "active": 1,
                    "status": str(RevisionStatus.ACTIVE),
                    "reason": because,
                }
            )
        return ApplyResult(name, deployment_id, number, spec_id, outcome)

    def get_deployment(self, name: str) -> Deployment | None:
        row = self._deployment_row(name)
        return None if row is None else _deployment(row)

    def list_deployments(self, *, include_removed: bool = False) -> list[Deployment]:
        where = None if include_removed else "removed_at IS NULL"
        rows = self._db.table("deployments").rows_where(where, order_by="name")
        return [_deployment(row) for row in rows]

    def active_revision(self, name: str) -> Revision | None:
        row = self._deployment_row(name)
        if row is None:
            return None
        active = self._active_row(row["deployment_id"])
        return None if active is None else _revision(active)

    def revision(self, name: str, revision: int) -> Revision | None:
        row = self._first(
            "SELECT r.* FROM revisions r JOIN deployments d USING (deployment_id)"
            " WHERE d.name = ? AND r.revision = ?",
            [name, revision],
        )
        return None if row is None else _revision(row)

    def history(self, name: str) -> list[Revision]:
        rows = self._db.query(
            "SELECT r.* FROM revisions r JOIN deployments d USING (deployment_id)"
            " WHERE d.name = ? ORDER BY r.revision",
            [name],
        )
        return [_revision(row) for row in rows]

    def mark_removed(self, name: str) -> Deployment | None:
        with self._write():
            row = self._deployment_row(name)
            if row is None:
                return None
            if row["removed_at"] is None:
                self._db.table("deployments").update(
                    row["deployment_id"], {"removed_at": self._stamp()}
                )
            return self.get_deployment(name)

    def roll_back(self, name: str, failed: int, reason: str) -> Revision | None:
        """Revision `failed` failed (with `reason`): the newest earlier revision that did not
        fail is active again. Returns it, or None when there is none (then `failed` is
        marked failed and stays active: there is nothing to go back to). One transaction,
        and a compare-and-swap: when `failed` is no longer the active revision (an apply
        came first), it raises RevisionChanged and writes nothing."""
        with self._write():
            row = self._deployment_row(name)
            if row is None:
                raise UnknownDeployment(f"no deployment named {name!r}")
            deployment_id = row["deployment_id"]
            active = self._active_row(deployment_id)
            if active is None or active["revision"] != failed:
                now = "none" if active is None else f"revision {active['revision']}"
                raise RevisionChanged(f"{name}: revision {failed} is not active ({now} is)")
            back = self._first(
                "SELECT * FROM revisions WHERE deployment_id = ? AND revision < ?"
                " AND status != ? ORDER BY revision DESC LIMIT 1",
                [deployment_id, failed, RevisionStatus.FAILED],
            )
            self._db.execute(
                "UPDATE revisions SET status = ?, reason = ?, active = ?"
                " WHERE deployment_id = ? AND revision = ?",
                [RevisionStatus.FAILED, reason, 0 if back else 1, deployment_id, failed],
            )
            if back is None:
                return None
            self._db.execute(
                "UPDATE revisions SET status = ?, active = 1"
                " WHERE deployment_id = ? AND revision = ?",
                [RevisionStatus.ACTIVE, deployment_id, back["revision"]],
            )
            return self.revision(name, back["revision"])

    def set_pinned_replicas(self, name: str, count: int | None) -> None:
        if count is not None and count < 0:
            raise ValueError(f"pinned replica count must be >= 0, not {count}")
        with self._write():
            cursor = self._db.execute(
                "UPDATE deployments SET pinned_replicas = ? WHERE name = ?", [count, name]
            )
            if cursor.rowcount == 0:
                raise UnknownDeployment(f"no deployment named {name!r}")

    def _deployment_row(self, name: str) -> dict[str, Any] | None:
        return self._first("SELECT * FROM deployments WHERE name = ?", [name])

    def _active_row(self, deployment_id: str) -> dict[str, Any] | None:
        return self._first(
            "SELECT * FROM revisions WHERE deployment_id = ? AND active = 1", [deployment_id]
        )

    def _first(self, sql: str, params: list[Any]) -> dict[str, Any] | None:
        return next(iter(self._db.query(sql, params)), None)

    # -- replicas -----------------------------------------------------------------------

    def save_replica(self, r: ReplicaRecord) -> ReplicaRecord:
        """Insert or update by `replica_id`; returns the record as stored, timestamps filled."""
        with self._write():
            now = self._stamp()
            existing = self._first(
                "SELECT created_at FROM replicas WHERE replica_id = ?", [r.replica_id]
            )
            created_at = now if existing is None else existing["created_at"]
            saved = replace(r, created_at=created_at, updated_at=now)
            self._db.table("replicas").upsert(_replica_row(saved), pk="replica_id")
        return saved

    def list_replicas(self, deployment_id: str) -> list[ReplicaRecord]:
        rows = self._db.table("replicas").rows_where(
            "deployment_id = ?", [deployment_id], order_by="created_at, replica_id"
        )
        return [ReplicaRecord(**row) for row in rows]

    def delete_replica(self, replica_id: str) -> None:
        """Forget a replica (and its last readiness verdict); forgetting one that is not
        known is not an error."""
        with self._write():
            self._db.execute("DELETE FROM replicas WHERE replica_id = ?", [replica_id])
            self._db.execute("DELETE FROM replica_readiness WHERE replica_id = ?", [replica_id])

    # -- events -------------------------------------------------------------------------

    def add_event(
        self,
        kind: str,
        message: str,
        *,
        deployment: str | None = None,
        replica: str | None = None,
        uid: int | None = None,
    ) -> Event:
        time = self._stamp()
        cursor = self._db.execute(
            "INSERT INTO events (time, deployment, replica, kind, message, uid) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [time, deployment, replica, str(kind), message, uid],
        )
        assert cursor.lastrowid is not None
        return Event(cursor.lastrowid, time, deployment, replica, str(kind), message, uid)

    def prune_events(self, before: datetime, keep_rows: int) -> int:
        """Drop events older than `before`, and all but the newest `keep_rows`; how many."""
        with self._write():
            cursor = self._db.execute(
                "DELETE FROM events WHERE time < ? OR id <= ("
                "SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET ?)",
                [rfc3339(before), keep_rows],
            )
        return cursor.rowcount

    def events(
        self, *, deployment: str | None = None, after_id: int = 0, limit: int | None = None
    ) -> list[Event]:
        """Oldest first. With `after_id`, those after it (up to `limit`: for following);
        with only `limit`, the last `limit` events (for `--tail`)."""
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, not {limit}")
        clauses = ["id > ?"]
        params: list[Any] = [after_id]
        if deployment is not None:
            clauses.append("deployment = ?")
            params.append(deployment)
        sql = f"SELECT * FROM events WHERE {' AND '.join(clauses)}"
        if limit is None:
            sql += " ORDER BY id"
        elif after_id:
            sql += " ORDER BY id LIMIT ?"
            params.append(limit)
        else:
            sql = f"SELECT * FROM ({sql} ORDER BY id DESC LIMIT ?) ORDER BY id"
            params.append(limit)
        return [Event(**row) for row in self._db.query(sql, params)]

    # -- metric rollups -----------------------------------------------------------------

    def add_metric_rollups(self, rows: Iterable[MetricRollup]) -> int:
        """Insert (or replace, by deployment, replica and minute) rollups; returns how many."""
        records = [dataclasses.asdict(r) for r in rows]
        if records:
            with self._write():
                self._db.table("metrics").upsert_all(
                    records, pk=("deployment", "replica", "minute")
                )
        return len(records)

    def metric_rollups(
        self,
        deployment: str,
        since: datetime,
        until: datetime | None = None,
        *,
        replica: str | None = None,
    ) -> list[MetricRollup]:
        """`deployment`'s rollups (every replica's and its own, or only `replica`'s) whose
        minute starts in [since, until), oldest first. `deployment = ""`: the host's."""
        clauses = ["deployment = ?", "minute >= ?"]
        params: list[Any] = [deployment, rfc3339(since)]
        if until is not None:
            clauses.append("minute < ?")
            params.append(rfc3339(until))
        if replica is not None:
            clauses.append("replica = ?")
            params.append(replica)
        sql = f"SELECT * FROM metrics WHERE {' AND '.join(clauses)} ORDER BY minute, replica"
        return [MetricRollup(**row) for row in self._db.query(sql, params)]

    def prune_metrics(self, before: datetime) -> int:
        """Delete every rollup whose minute starts before `before`; returns how many."""
        with self._write():
            cursor = self._db.execute("DELETE FROM metrics WHERE minute < ?", [rfc3339(before)])
        return cursor.rowcount


def _deployment(row: dict[str, Any]) -> Deployment:
    return Deployment(**row)


def _revision(row: dict[str, Any]) -> Revision:
    return Revision(**{**row, "active": bool(row["active"])})


def _replica_row(r: ReplicaRecord) -> dict[str, Any]:
    return {
        "replica_id": r.replica_id,
        "deployment_id": r.deployment_id,
        "container_id": r.container_id,
        "spec_id": r.spec_id,
        "host_port": r.host_port,
        "state": str(r.state),
        "restarts": r.restarts,
        "last_exit_reason": r.last_exit_reason,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
    }
