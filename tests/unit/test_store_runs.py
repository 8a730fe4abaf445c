"""berthd's runs and the replicas' last readiness verdicts, against a real SQLite file."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from daemon.store.database import ReplicaRecord, Store
from daemon.store.readiness import list_verdicts, save_verdict
from daemon.store.runs import (
    KEEP,
    begin_run,
    end_run,
    heartbeat,
    last_unclean_stop,
    process_started,
)

START = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.moment = START

    def __call__(self) -> datetime:
        return self.moment

    def advance(self, seconds: float) -> None:
        self.moment += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[Store]:
    with Store(tmp_path / "berth.db", now=clock) as s:
        yield s


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has ended (ours, waited for)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_the_first_start_says_so(store: Store) -> None:
    start = begin_run(store, 4242, None, "1.0")
    assert (start.previous, start.down_s) == (None, None)
    assert "first start" in start.message(4242, "1.0")
    assert last_unclean_stop(store) is None


def test_a_clean_stop_then_a_start_says_how_long_berthd_was_down(
    store: Store, clock: Clock, dead_pid: int
) -> None:
    first = begin_run(store, dead_pid, None, "1.0")
    clock.advance(100)
    end_run(store, first.run_id)
    clock.advance(7)
    second = begin_run(store, 5555, None, "1.1")
    assert (second.previous, second.down_s) == ("clean", 7.0)
    assert "after a clean stop" in second.message(5555, "1.1")
    assert last_unclean_stop(store) is None


def test_a_run_whose_process_is_gone_was_an_unclean_stop_counted_from_its_heartbeat(
    store: Store, clock: Clock, dead_pid: int
) -> None:
    first = begin_run(store, dead_pid, None, "1.0")
    clock.advance(30)
    heartbeat(store, first.run_id)
    alive_at = clock.moment
    clock.advance(12)  # killed somewhere in here; restarted at the end
    second = begin_run(store, 5555, None, "1.0")
    assert (second.previous, second.down_s) == ("unclean", 12.0)
    assert "after an unclean stop" in second.message(5555, "1.0")
    stop = last_unclean_stop(store)
    assert stop is not None and (stop.pid, stop.down_s) == (dead_pid, 12.0)
    assert stop.at == alive_at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    # A later clean cycle keeps the unclean stop as the last one.
    end_run(store, second.run_id)
    begin_run(store, 5556, None, "1.0")
    assert last_unclean_stop(store) == stop


def test_a_run_whose_process_still_lives_is_left_alone(store: Store, clock: Clock) -> None:
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as live:
        try:
            other = begin_run(store, live.pid, process_started(live.pid), "1.0")
            clock.advance(5)
            start = begin_run(store, 5555, None, "1.0")
            assert start.previous == "running"
            assert f"while the berthd before it (pid {live.pid}) still runs" in start.message(
                5555, "1.0"
            )
            assert last_unclean_stop(store) is None
            begin_run(store, 6666, None, "1.0")  # and again: still running
            row = store._first("SELECT ended FROM berthd_runs WHERE run_id = ?", [other.run_id])
            assert row == {"ended": "running"}
        finally:
            live.kill()


def test_a_reused_pid_does_not_pass_for_the_old_run(store: Store, clock: Clock) -> None:
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as live:
        try:
            started = process_started(live.pid)
            assert started is not None
            begin_run(store, live.pid, started - 1000.0, "1.0")  # "an older process"
            clock.advance(3)
            assert begin_run(store, 5555, None, "1.0").previous == "unclean"
        finally:
            live.kill()


def test_only_the_newest_runs_are_kept(store: Store, dead_pid: int) -> None:
    for _ in range(KEEP + 5):
        end_run(store, begin_run(store, dead_pid, None, "1.0").run_id)
    count = store._first("SELECT COUNT(*) AS n FROM berthd_runs", [])
    assert count == {"n": KEEP}


def test_a_verdict_is_kept_per_replica_and_goes_with_it(store: Store) -> None:
    store.apply("web", "s1", 'name = "web"', "{}")
    deployment = store.get_deployment("web")
    assert deployment is not None
    did = deployment.deployment_id
    save_verdict(store, did, "r1", "c1", "t1", ready=True)
    save_verdict(store, did, "r2", "c2", "t1", ready=True)
    save_verdict(store, did, "r2", "c2", "t1", ready=False)  # the latest verdict wins
    verdicts = list_verdicts(store, did)
    assert {rid: v.ready for rid, v in verdicts.items()} == {"r1": True, "r2": False}
    assert verdicts["r1"].holds_for("c1", "t1")
    assert not verdicts["r1"].holds_for("c9", "t1") and not verdicts["r1"].holds_for("c1", "t2")
    store.save_replica(ReplicaRecord("r1", did, "c1", "s1", None, "ready"))
    store.delete_replica("r1")
    assert set(list_verdicts(store, did)) == {"r2"}
    assert list_verdicts(store, "another") == {}
