"""The store against a real SQLite file per test (STYLE.md #8), with a fake clock."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from functools import partial
from pathlib import Path

import pytest
import trio

from daemon.store.access import StoreAccess
from daemon.store.database import (
    Event,
    ReplicaRecord,
    RevisionChanged,
    RevisionStatus,
    Store,
    StoreError,
    UnknownDeployment,
    rfc3339,
)
from daemon.store.events import EventLog
from daemon.store.migrations import LATEST_VERSION, MIGRATIONS

START = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


class FakeNow:
    """A clock that moves one second per reading, so every stamp is distinct and known."""

    def __init__(self) -> None:
        self.moment = START

    def __call__(self) -> datetime:
        moment = self.moment
        self.moment += timedelta(seconds=1)
        return moment


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
def open_store(db_path: Path) -> Iterator[Callable[[], Store]]:
    opened: list[Store] = []

    def opener() -> Store:
        store = Store(db_path, now=FakeNow())
        opened.append(store)
        return store

    yield opener
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: Callable[[], Store]) -> Store:
    return open_store()


def apply(store: Store, name: str, spec_id: str) -> str:
    return store.apply(name, spec_id, f"# {spec_id}\n", f'{{"id": "{spec_id}"}}').outcome


# -- deployments and revisions ------------------------------------------------------------


def test_first_apply_creates_revision_one(store: Store) -> None:
    result = store.apply("echo", "s1", "name = 'echo'\n", '{"name": "echo"}')

    assert result.outcome == "created"
    assert result.revision == 1
    assert (result.name, result.spec_id) == ("echo", "s1")
    assert len(result.deployment_id) == 32
    deployment = store.get_deployment("echo")
    assert deployment is not None
    assert deployment.deployment_id == result.deployment_id
    assert deployment.created_at == "2024-05-01T12:00:00.000Z"
    assert deployment.removed_at is None
    assert deployment.pinned_replicas is None
    active = store.active_revision("echo")
    assert active is not None
    assert (active.revision, active.spec_id, active.active) == (1, "s1", True)
    assert (active.spec_text, active.spec_json) == ("name = 'echo'\n", '{"name": "echo"}')
    assert active.status == "active"
    assert RevisionStatus.ACTIVE == active.status
    assert active.reason is None


def test_identical_reapply_is_unchanged_and_writes_nothing(store: Store) -> None:
    first = store.apply("echo", "s1", "a", "{}")
    again = store.apply("echo", "s1", "a", "{}")

    assert again.outcome == "unchanged"
    assert (again.revision, again.deployment_id) == (1, first.deployment_id)
    assert len(store.history("echo")) == 1


def test_changed_spec_makes_revision_two_and_supersedes_one(store: Store) -> None:
    first = store.apply("echo", "s1", "a", "{}")
    second = store.apply("echo", "s2", "b", "{}")

    assert second.outcome == "updated"
    assert (second.revision, second.deployment_id) == (2, first.deployment_id)
    old = store.revision("echo", 1)
    assert old is not None
    assert (old.active, old.status) == (False, "superseded")
    active = store.active_revision("echo")
    assert active is not None and active.revision == 2


def test_reapplying_an_older_spec_is_a_new_revision(store: Store) -> None:
    assert [apply(store, "echo", s) for s in ("s1", "s2", "s1")] == [
        "created",
        "updated",
        "updated",
    ]
    assert [(r.revision, r.spec_id, r.active) for r in store.history("echo")] == [
        (1, "s1", False),
        (2, "s2", False),
        (3, "s1", True),
    ]


def test_history_is_in_revision_order_per_deployment(store: Store) -> None:
    for spec_id in ("a1", "a2", "a3"):
        apply(store, "alpha", spec_id)
        apply(store, "beta", "b" + spec_id)

    assert [r.revision for r in store.history("alpha")] == [1, 2, 3]
    assert [r.spec_id for r in store.history("beta")] == ["ba1", "ba2", "ba3"]
    assert [r.status for r in store.history("alpha")] == ["superseded", "superseded", "active"]
    assert store.history("nope") == []
    assert store.revision("alpha", 9) is None
    assert store.active_revision("nope") is None


def test_rm_keeps_history_and_shows_removed_at(store: Store) -> None:
    apply(store, "echo", "s1")
    apply(store, "echo", "s2")

    removed = store.mark_removed("echo")

    assert removed is not None and removed.removed_at is not None and removed.removed
    assert store.get_deployment("echo") == removed
    assert [r.revision for r in store.history("echo")] == [1, 2]
    assert store.list_deployments() == []
    assert store.list_deployments(include_removed=True) == [removed]
    assert store.mark_removed("nope") is None
    # Removing twice keeps the first time.
    assert store.mark_removed("echo") == removed


def test_reapply_after_rm_keeps_deployment_id(store: Store) -> None:
    first = store.apply("echo", "s1", "a", "{}")
    store.mark_removed("echo")

    again = store.apply("echo", "s1", "a", "{}")

    assert again.outcome == "created"
    assert again.deployment_id == first.deployment_id
    assert again.revision == 2
    deployment = store.get_deployment("echo")
    assert deployment is not None and deployment.removed_at is None
    assert [r.active for r in store.history("echo")] == [False, True]


def test_failed_revision_stays_failed_when_superseded(store: Store) -> None:
    apply(store, "echo", "s1")
    apply(store, "echo", "s2")
    store.roll_back("echo", 2, "no progress in 10m")

    apply(store, "echo", "s1")  # a rollback is a new revision with the old spec

    failed = store.revision("echo", 2)
    assert failed is not None
    assert (failed.active, failed.status, failed.reason) == (False, "failed", "no progress in 10m")
    with pytest.raises(UnknownDeployment):
        store.roll_back("nope", 1, "failed")


def test_pinned_replicas(store: Store) -> None:
    apply(store, "echo", "s1")

    def pinned() -> int | None:
        deployment = store.get_deployment("echo")
        assert deployment is not None
        return deployment.pinned_replicas

    store.set_pinned_replicas("echo", 3)
    assert pinned() == 3
    store.set_pinned_replicas("echo", None)
    assert pinned() is None
    with pytest.raises(UnknownDeployment):
        store.set_pinned_replicas("nope", 1)
    with pytest.raises(ValueError):
        store.set_pinned_replicas("echo", -1)


def test_list_deployments_by_name(store: Store) -> None:
    for name in ("zeta", "alpha", "mid"):
        apply(store, name, "s1")

    assert [d.name for d in store.list_deployments()] == ["alpha", "mid", "zeta"]


# -- replicas -------------------------------------------------------------------------------


def replica(deployment_id: str, replica_id: str, **changes: object) -> ReplicaRecord:
    fields: dict[str, object] = {
        "replica_id": replica_id,
        "deployment_id": deployment_id,
        "container_id": None,
        "spec_id": "s1",
        "host_port": None,
        "state": "starting",
    }
    fields.update(changes)
    return ReplicaRecord(**fields)  # type: ignore[arg-type]


def test_replicas_upsert_list_delete(store: Store) -> None:
    dep = store.apply("echo", "s1", "a", "{}").deployment_id
    other = store.apply("other", "s1", "a", "{}").deployment_id

    first = store.save_replica(replica(dep, "r1"))
    store.save_replica(replica(dep, "r2", host_port=40001))
    store.save_replica(replica(other, "r3"))
    updated = store.save_replica(
        replica(dep, "r1", container_id="c1", state="ready", restarts=2, last_exit_reason="oom")
    )

    assert updated.created_at == first.created_at
    assert updated.updated_at > first.updated_at
    listed = store.list_replicas(dep)
    assert [r.replica_id for r in listed] == ["r1", "r2"]
    assert listed[0] == updated
    assert (listed[0].container_id, listed[0].state, listed[0].restarts) == ("c1", "ready", 2)
    assert listed[1].host_port == 40001

    store.delete_replica("r1")
    store.delete_replica("never-existed")
    assert [r.replica_id for r in store.list_replicas(dep)] == ["r2"]
    assert [r.replica_id for r in store.list_replicas(other)] == ["r3"]


def test_replica_of_unknown_deployment_is_refused(store: Store) -> None:
    with pytest.raises(sqlite3.IntegrityError):
        store.save_replica(replica("0" * 32, "r1"))


# -- events ---------------------------------------------------------------------------------


def test_events_filters_after_id_and_limit(store: Store) -> None:
    made = [
        store.add_event("applied", "echo revision 1", deployment="echo"),
        store.add_event("applied", "web revision 1", deployment="web"),
        store.add_event("started", "replica up", deployment="echo", replica="r1"),
        store.add_event("berthd", "started"),
        store.add_event("scaled", "1 -> 2", deployment="echo"),
    ]
    ids = [e.id for e in made]

    assert made[2] == Event(ids[2], made[2].time, "echo", "r1", "started", "replica up")
    assert store.events() == made
    assert store.events(deployment="echo") == [made[0], made[2], made[4]]
    assert store.events(after_id=ids[1]) == made[2:]
    assert store.events(after_id=ids[1], deployment="echo") == [made[2], made[4]]
    # limit alone: the last N, still oldest first.
    assert store.events(limit=2) == made[3:]
    assert store.events(deployment="echo", limit=2) == [made[2], made[4]]
    # limit after an id: the next N (paging forward when following).
    assert store.events(after_id=ids[0], limit=2) == made[1:3]
    assert store.events(limit=0) == []
    assert store.events(after_id=ids[-1]) == []
    with pytest.raises(ValueError):
        store.events(limit=-1)


def test_event_times_are_rfc3339_utc(store: Store) -> None:
    first = store.add_event("a", "one")
    second = store.add_event("b", "two")

    assert first.time == "2024-05-01T12:00:00.000Z"
    assert second.time == "2024-05-01T12:00:01.000Z"
    assert datetime.fromisoformat(first.time) == START


def test_rfc3339_converts_to_utc_and_refuses_naive_times() -> None:
    plus_two = datetime(2024, 5, 1, 16, 0, 0, 500000, tzinfo=timezone(timedelta(hours=2)))
    assert rfc3339(plus_two) == "2024-05-01T14:00:00.500Z"
    with pytest.raises(ValueError):
        rfc3339(datetime(2024, 5, 1))


# -- the file -----------------------------------------------------------------------------


def test_wal_mode_is_on(store: Store, db_path: Path) -> None:
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_data_survives_close_and_reopen(open_store: Callable[[], Store]) -> None:
    store = open_store()
    result = store.apply("echo", "s1", "a", "{}")
    store.apply("echo", "s2", "b", "{}")
    store.save_replica(replica(result.deployment_id, "r1", host_port=40000))
    event = store.add_event("applied", "hello", deployment="echo")
    history = store.history("echo")
    store.close()

    reopened = open_store()
    assert reopened.history("echo") == history
    assert reopened.get_deployment("echo") is not None
    assert [r.host_port for r in reopened.list_replicas(result.deployment_id)] == [40000]
    assert reopened.events() == [event]
    assert reopened.apply("echo", "s2", "b", "{}").outcome == "unchanged"


def test_new_database_is_at_latest_version(store: Store) -> None:
    assert store.schema_version == LATEST_VERSION == len(MIGRATIONS)


def test_old_database_migrates_to_latest_and_reopen_is_a_no_op(
    db_path: Path, open_store: Callable[[], Store]
) -> None:
    # A file written by a berthd that knew only the first migration.
    with sqlite3.connect(db_path) as conn:
        conn.executescript(MIGRATIONS[0])
        conn.execute("PRAGMA user_version = 1")
        conn.execute(
            "INSERT INTO deployments (deployment_id, name, created_at) VALUES (?, ?, ?)",
            ["d" * 32, "old", "2023-01-01T00:00:00.000Z"],
        )
    conn.close()

    store = open_store()
    assert store.schema_version == LATEST_VERSION
    old = store.get_deployment("old")
    assert old is not None and old.deployment_id == "d" * 32
    store.add_event("migrated", "tables from later migrations exist")
    store.close()

    again = open_store()  # every CREATE TABLE would fail if a migration ran twice
    assert again.schema_version == LATEST_VERSION
    assert [e.kind for e in again.events()] == ["migrated"]


def test_database_from_a_newer_berthd_is_refused(db_path: Path) -> None:
    with sqlite3.connect(db_path) as conn:
        conn.execute(f"PRAGMA user_version = {LATEST_VERSION + 1}")
    conn.close()

    with pytest.raises(StoreError, match="newer"):
        Store(db_path)


def test_repr_shows_path_and_version(store: Store, db_path: Path) -> None:
    assert repr(store) == f"<Store {str(db_path)!r} schema_version={LATEST_VERSION}>"


def test_a_failed_apply_leaves_nothing_behind(store: Store) -> None:
    apply(store, "echo", "s1")
    bad_text: str = None  # type: ignore[assignment]  # the revision insert fails NOT NULL

    with pytest.raises(sqlite3.IntegrityError):
        store.apply("fresh", "s1", bad_text, "{}")
    with pytest.raises(sqlite3.IntegrityError):
        store.apply("echo", "s2", bad_text, "{}")

    assert store.get_deployment("fresh") is None
    assert [(r.revision, r.active) for r in store.history("echo")] == [(1, True)]


async def test_usable_from_worker_threads(store: Store) -> None:
    # The daemon calls the store through trio.to_thread, one call at a time.
    result = await trio.to_thread.run_sync(store.apply, "echo", "s1", "a", "{}")
    history = await trio.to_thread.run_sync(store.history, "echo")

    assert [r.revision for r in history] == [result.revision]


def test_roll_back_marks_the_failed_revision_and_reactivates_the_last_good_one(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "berth.db")
    for n in (1, 2):
        store.apply("web", f"s{n}", f"text {n}", "{}")
    store.roll_back("web", 2, "crashed")
    store.apply("web", "s3", "text 3", "{}")
    back = store.roll_back("web", 3, "no progress in 10m")
    assert back is not None and back.revision == 1 and back.active
    history = {r.revision: (r.active, r.status, r.reason) for r in store.history("web")}
    assert history == {
        1: (True, "active", None),
        2: (False, "failed", "crashed"),
        3: (False, "failed", "no progress in 10m"),
    }
    assert store.active_revision("web") == back
    store.close()


def test_roll_back_with_nothing_to_go_back_to_keeps_the_failed_revision_active(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "berth.db")
    store.apply("web", "s1", "text", "{}")
    assert store.roll_back("web", 1, "never ready") is None
    (only,) = store.history("web")
    assert (only.active, only.status, only.reason) == (True, "failed", "never ready")
    store.close()


def test_roll_back_is_a_compare_and_swap(store: Store) -> None:
    """A worker that saw revision 2 active rolls it back after the user applied revision 3:
    nothing is written, revision 3 stays the one active revision."""
    apply(store, "echo", "s1")
    apply(store, "echo", "s2")
    apply(store, "echo", "s3")  # meanwhile
    with pytest.raises(RevisionChanged):
        store.roll_back("echo", 2, "no progress in 10m")
    assert [(r.revision, r.active, r.status) for r in store.history("echo")] == [
        (1, False, "superseded"),
        (2, False, "superseded"),
        (3, True, "active"),
    ]


def test_writes_take_the_write_lock_at_begin(tmp_path: Path) -> None:
    """BEGIN IMMEDIATE: a write transaction holds SQLite's write lock from its first
    statement, so what it reads cannot be changed by another writer before it writes (a
    deferred BEGIN would let the other connection in, and fail the upgrade later)."""
    store = Store(tmp_path / "berth.db")
    other = sqlite3.connect(str(tmp_path / "berth.db"), timeout=0)
    with store._write():
        store.active_revision("echo")  # a read, as roll_back and apply begin
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
    other.execute("BEGIN IMMEDIATE")  # free again once the transaction ended
    other.rollback()
    other.close()
    store.close()


def test_events_are_pruned_by_age_and_by_count(store: Store) -> None:
    for n in range(10):  # FakeNow: one second apart, from START on
        store.add_event("note", f"event {n}")
    assert store.prune_events(START + timedelta(seconds=3), keep_rows=100) == 3
    assert [e.message for e in store.events()][:1] == ["event 3"]
    assert store.prune_events(START, keep_rows=4) == 3
    assert [e.message for e in store.events()] == [f"event {n}" for n in range(6, 10)]
    assert store.prune_events(START, keep_rows=4) == 0


async def test_the_event_log_prunes_itself_every_hour(
    store: Store, mock_clock: trio.testing.MockClock
) -> None:
    mock_clock.autojump_threshold = 0.05  # jump only once the store's thread calls are done
    access = StoreAccess(store)
    log = EventLog(access)
    for n in range(5):
        await log.emit("note", f"event {n}")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(log.prune_forever, keep=10 * 365 * 86400.0, max_rows=2))
        await trio.sleep(1)
        assert [e.message for e in store.events()] == ["event 3", "event 4"]
        for n in range(5, 8):
            await log.emit("note", f"event {n}")
        await trio.sleep(3600)
        assert [e.message for e in store.events()] == ["event 6", "event 7"]
        nursery.cancel_scope.cancel()
