"""Metric rollups in the store, against a real SQLite file per test (STYLE.md #8)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from daemon.store.database import MetricRollup, Store, rfc3339
from daemon.store.migrations import LATEST_VERSION, MIGRATIONS

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def minute(n: int) -> str:
    return rfc3339(T0 + timedelta(minutes=n))


def rollup(deployment: str, replica: str, n: int, **values: float | None) -> MetricRollup:
    return replace(MetricRollup(deployment, replica, minute(n), samples=12), **values)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "state.db") as s:
        yield s


def test_rollups_round_trip_with_nulls(store: Store) -> None:
    row = MetricRollup(
        deployment="echo",
        replica="r1",
        minute=minute(0),
        samples=12,
        cpu_percent=42.5,
        memory_bytes=1024.0,
        memory_limit_bytes=None,
        requests_per_s=3.25,
        latency_p50=0.012,
        latency_p95=None,
    )
    assert store.add_metric_rollups([row]) == 1
    assert store.metric_rollups("echo", T0) == [row]


def test_rollups_since_until_and_order(store: Store) -> None:
    rows = [rollup("echo", r, n, cpu_percent=float(n)) for n in (2, 0, 1) for r in ("r2", "", "r1")]
    store.add_metric_rollups(rows)
    got = store.metric_rollups("echo", T0 + timedelta(minutes=1))
    assert [(r.minute, r.replica) for r in got] == [
        (minute(1), ""),
        (minute(1), "r1"),
        (minute(1), "r2"),
        (minute(2), ""),
        (minute(2), "r1"),
        (minute(2), "r2"),
    ]
    bounded = store.metric_rollups("echo", T0, T0 + timedelta(minutes=1))
    assert {r.minute for r in bounded} == {minute(0)}
    only = store.metric_rollups("echo", T0, replica="r1")
    assert [r.cpu_percent for r in only] == [0.0, 1.0, 2.0]


def test_rollups_are_per_deployment_and_host_rows_use_the_empty_name(store: Store) -> None:
    store.add_metric_rollups(
        [
            rollup("echo", "r1", 0, cpu_percent=1.0),
            rollup("other", "r9", 0, cpu_percent=2.0),
            rollup("", "", 0, cpu_percent=3.0),
            rollup("", "gpu:0", 0, gpu_utilization=50.0, gpu_power_w=120.0),
        ]
    )
    assert [r.replica for r in store.metric_rollups("echo", T0)] == ["r1"]
    host = store.metric_rollups("", T0)
    assert [(r.replica, r.cpu_percent, r.gpu_power_w) for r in host] == [
        ("", 3.0, None),
        ("gpu:0", None, 120.0),
    ]
    assert store.metric_rollups("nobody", T0) == []


def test_writing_a_minute_again_replaces_it(store: Store) -> None:
    store.add_metric_rollups([rollup("echo", "r1", 0, cpu_percent=1.0)])
    store.add_metric_rollups([rollup("echo", "r1", 0, cpu_percent=9.0)])
    assert [r.cpu_percent for r in store.metric_rollups("echo", T0)] == [9.0]


def test_no_rows_writes_nothing(store: Store) -> None:
    assert store.add_metric_rollups([]) == 0
    assert store.metric_rollups("echo", T0) == []


def test_prune_deletes_only_older_minutes(store: Store) -> None:
    store.add_metric_rollups([rollup(d, "r", n) for d in ("echo", "") for n in range(5)])
    assert store.prune_metrics(T0 + timedelta(minutes=3)) == 6
    assert [r.minute for r in store.metric_rollups("echo", T0)] == [minute(3), minute(4)]
    assert [r.minute for r in store.metric_rollups("", T0)] == [minute(3), minute(4)]
    assert store.prune_metrics(T0) == 0


def test_rollups_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with Store(path) as s:
        s.add_metric_rollups([rollup("echo", "r1", 0, cpu_percent=5.0)])
    with Store(path) as s:
        assert [r.cpu_percent for r in s.metric_rollups("echo", T0)] == [5.0]


def test_a_database_from_before_metrics_gains_the_table(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    for version, script in enumerate(MIGRATIONS[:3]):
        conn.executescript(script)
        conn.execute(f"PRAGMA user_version = {version + 1}")
    conn.commit()
    conn.close()
    with Store(path) as s:
        assert s.schema_version == LATEST_VERSION
        s.add_metric_rollups([rollup("echo", "r1", 0)])
        assert len(s.metric_rollups("echo", T0)) == 1


def test_naive_times_are_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="naive"):
        store.metric_rollups("echo", datetime(2024, 5, 1))
