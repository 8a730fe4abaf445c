"""The autoscaler policy, driven with explicit time.

Each case is a script of (time, load) steps fed back like the worker does: the count a
decision asks for is the next sample's current count. Loads are given either as a per-replica
reading (`cpu=90`) or, for the flapping cases, as a total demand that more replicas share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from config.spec import Autoscale, AutoscaleMetric, MetricName, Replicas, SeriesSelector, Summary
from daemon.metrics.model import DeploymentLoad
from daemon.scaling.driver import sample_of
from daemon.scaling.policy import Autoscaler, LoadSample

CPU50 = AutoscaleMetric(MetricName.CPU, target=50.0)
LATENCY_200MS = AutoscaleMetric(MetricName.REQUEST_DURATION, target=0.2)
P95_1S = AutoscaleMetric(MetricName.REQUEST_DURATION, Summary.P95, target=1.0)
CONCURRENCY_4 = AutoscaleMetric(MetricName.CONCURRENCY, target=4.0)
QUEUE_2 = AutoscaleMetric(MetricName.QUEUE, target=2.0)
GPU_UTIL_80 = AutoscaleMetric(MetricName.GPU_UTILIZATION, target=80.0)
GPU_MEM_70 = AutoscaleMetric(MetricName.GPU_MEMORY, target=70.0)

BUSY: dict[str, Any] = {"requests_per_second": 5.0}
IDLE: dict[str, Any] = {"requests_per_second": 0.0}


@dataclass
class Case:
    id: str
    metrics: tuple[AutoscaleMetric, ...]
    start: int
    # (time, load keywords for LoadSample, expected count after the decision)
    steps: list[tuple[float, dict[str, Any], int]]
    min: int = 1
    max: int = 10
    delay: float = 300.0
    # step index -> the exact reason expected there
    reasons: dict[int, str] = field(default_factory=dict)


CASES = [
    Case(
        "up at once",
        (LATENCY_200MS,),
        start=1,
        steps=[(0, {**BUSY, "request_duration_mean": 0.31}, 2)],
        reasons={0: "request_duration avg 310ms > target 200ms: 1 -> 2"},
    ),
    Case(
        "up by the ratio, in one step",
        (CPU50,),
        start=2,
        steps=[(0, {**BUSY, "cpu": 180.0}, 8)],
        reasons={0: "cpu 180% > target 50%: 2 -> 8"},
    ),
    Case(
        "down only after the delay",
        (CPU50,),
        start=2,
        steps=[
            (0, {**BUSY, "cpu": 100.0}, 4),
            (10, {**BUSY, "cpu": 25.0}, 4),
            (299, {**BUSY, "cpu": 25.0}, 4),
            (300, {**BUSY, "cpu": 25.0}, 2),
        ],
        reasons={
            1: "cpu 25% < target 50%: stays at 4 until the load is lower for 5m (2 wanted)",
            3: "cpu 25% < target 50% for 5m: 4 -> 2",
        },
    ),
    Case(
        "down to the highest proposal of the window, not the lowest",
        (CPU50,),
        start=8,
        steps=[
            (0, {**BUSY, "cpu": 50.0}, 8),
            (100, {**BUSY, "cpu": 37.5}, 8),  # proposes 6
            (200, {**BUSY, "cpu": 12.5}, 8),  # proposes 2
            (300, {**BUSY, "cpu": 12.5}, 6),  # the seed (8) and t=0 left the window; 6 remains
            (400, {**BUSY, "cpu": 12.5}, 2),  # t=100 (6) left too
            (700, {**BUSY, "cpu": 50.0}, 2),
        ],
        reasons={3: "cpu 12.5% < target 50%: 8 -> 6 (the highest proposal of the last 5m)"},
    ),
    Case(
        "a new autoscaler waits a window before going down",
        (CPU50,),
        start=5,
        steps=[(0, {**BUSY, "cpu": 10.0}, 5), (299, {**BUSY, "cpu": 10.0}, 5)],
    ),
    Case(
        "no delay: down at once",
        (CPU50,),
        start=5,
        delay=0.0,
        steps=[(0, {**BUSY, "cpu": 10.0}, 1)],
        reasons={0: "cpu 10% < target 50%: 5 -> 1"},
    ),
    Case(
        "within the tolerance nothing moves",
        (CPU50,),
        start=10,
        max=20,
        delay=0.0,
        steps=[
            (0, {**BUSY, "cpu": 55.0}, 10),
            (1, {**BUSY, "cpu": 45.0}, 10),
            (2, {**BUSY, "cpu": 54.0}, 10),
        ],
        reasons={0: "cpu 55% ~ target 50%: stays at 10"},
    ),
    Case(
        "just outside the tolerance it moves",
        (CPU50,),
        start=10,
        max=20,
        delay=0.0,
        steps=[(0, {**BUSY, "cpu": 55.5}, 12), (1, {**BUSY, "cpu": 44.0}, 11)],
    ),
    Case(
        "the max caps a scale-up",
        (CPU50,),
        start=2,
        max=4,
        steps=[(0, {**BUSY, "cpu": 500.0}, 4), (1, {**BUSY, "cpu": 500.0}, 4)],
        reasons={
            0: "cpu 500% > target 50%: 2 -> 4 (replicas.max; 20 wanted)",
            1: "cpu 500% > target 50%: stays at 4 (replicas.max; 40 wanted)",
        },
    ),
    Case(
        "the min floors a scale-down",
        (CPU50,),
        start=4,
        min=2,
        delay=0.0,
        steps=[(0, {**BUSY, "cpu": 5.0}, 2), (1, {**BUSY, "cpu": 5.0}, 2)],
        reasons={0: "cpu 5% < target 50%: 4 -> 2", 1: "cpu 5% < target 50%: stays at 2"},
    ),
    Case(
        "a raised min applies at once",
        (CPU50,),
        start=1,
        min=3,
        steps=[(0, {**BUSY, "cpu": 50.0}, 3)],
        reasons={0: "replicas.min is 3: 1 -> 3"},
    ),
    Case(
        "a lowered max applies at once",
        (CPU50,),
        start=5,
        max=3,
        steps=[(0, {**BUSY, "cpu": 50.0}, 3)],
        reasons={0: "replicas.max is 3: 5 -> 3"},
    ),
    Case(
        "several metrics: the highest proposal wins",
        (CPU50, P95_1S, CONCURRENCY_4),
        start=2,
        steps=[
            (0, {**BUSY, "cpu": 60.0, "request_duration_p95": 2.0, "concurrency": 1.0}, 4),
            (1, {**BUSY, "cpu": 150.0, "request_duration_p95": 1.0, "concurrency": 1.0}, 12),
        ],
        max=20,
        reasons={
            0: "request_duration p95 2s > target 1s: 2 -> 4",
            1: "cpu 150% > target 50%: 4 -> 12",
        },
    ),
    Case(
        "concurrency: in flight per replica",
        (CONCURRENCY_4,),
        start=2,
        steps=[(0, {**BUSY, "concurrency": 10.0}, 5)],
        reasons={0: "concurrency 10 > target 4: 2 -> 5"},
    ),
    Case(
        "queue: requests waiting at the endpoint per replica",
        (QUEUE_2,),
        start=2,
        steps=[(0, {**BUSY, "waiting_requests": 12}, 6)],
        reasons={0: "queue 6 > target 2: 2 -> 6"},
    ),
    Case(
        "a missing metric is skipped, not zero",
        (GPU_UTIL_80, CPU50),
        start=3,
        delay=0.0,
        steps=[(0, {**BUSY, "cpu": 50.0}, 3), (1, {**BUSY, "cpu": 100.0}, 6)],
    ),
    Case(
        "nothing measured: the count stays",
        (CPU50, LATENCY_200MS),
        start=3,
        delay=0.0,
        steps=[(0, {}, 3), (1, {"requests_per_second": None}, 3)],
        reasons={0: "no load figures: stays at 3"},
    ),
    Case(
        "no traffic is zero load, even with busy memory and VRAM",
        (GPU_MEM_70, LATENCY_200MS),
        start=3,
        steps=[
            (0, {**IDLE, "gpu_memory": 95.0}, 3),
            (299, {**IDLE, "gpu_memory": 95.0}, 3),
            (300, {**IDLE, "gpu_memory": 95.0}, 1),
        ],
        reasons={
            0: "no traffic: stays at 3 until the load is lower for 5m (1 wanted)",
            2: "no traffic for 5m: 3 -> 1",
        },
    ),
    Case(
        "requests in flight are traffic, even with no new request",
        (CONCURRENCY_4,),
        start=2,
        delay=0.0,
        steps=[(0, {"requests_per_second": 0.0, "concurrency": 4.0}, 2)],
    ),
    Case(
        "to zero after a window without requests",
        (LATENCY_200MS,),
        start=1,
        min=0,
        max=2,
        steps=[
            (0, {**BUSY, "request_duration_mean": 0.1}, 1),
            (10, IDLE, 1),
            (299, IDLE, 1),  # the last sample with traffic (t=0) is still in the window
            (300, IDLE, 0),
        ],
        reasons={3: "no traffic for 5m: 1 -> 0"},
    ),
    Case(
        "from zero: a waiting request asks for one replica at once",
        (LATENCY_200MS,),
        start=0,
        min=0,
        max=3,
        steps=[
            (0, {**IDLE, "waiting_requests": 1}, 1),
            (1, {**BUSY, "request_duration_mean": 0.5}, 3),
        ],
        reasons={
            0: "1 request waiting with 0 replicas: 0 -> 1",
            1: "request_duration avg 500ms > target 200ms: 1 -> 3",
        },
    ),
    Case(
        "from zero with no metrics at all",
        (),
        start=0,
        min=0,
        max=3,
        steps=[(0, {"waiting_requests": 3}, 1), (1, BUSY, 1)],
        reasons={0: "3 requests waiting with 0 replicas: 0 -> 1"},
    ),
    Case(
        "zero stays zero without requests",
        (LATENCY_200MS,),
        start=0,
        min=0,
        steps=[(0, IDLE, 0), (1000, IDLE, 0)],
        reasons={1: "no traffic: stays at 0"},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_policy_table(case: Case) -> None:
    scaler = Autoscaler(
        Replicas(min=case.min, max=case.max),
        Autoscale(metrics=case.metrics, scale_down_delay=case.delay),
    )
    current = case.start
    for index, (now, load, expected) in enumerate(case.steps):
        decision = scaler.observe(now, LoadSample(replicas=current, **load))
        assert decision.current == current
        assert decision.desired == expected, (index, decision.reason)
        if index in case.reasons:
            assert decision.reason == case.reasons[index]
        assert decision.changed == (expected != current)
        current = decision.desired


def run_demand(scaler: Autoscaler, start: int, demand: list[tuple[float, float]]) -> list[int]:
    """Feed a total CPU demand (percent of one replica) shared by the replicas; the counts."""
    current = start
    counts = []
    for now, total in demand:
        sample = LoadSample(replicas=current, cpu=total / max(current, 1), **BUSY)
        current = scaler.observe(now, sample).desired
        counts.append(current)
    return counts


@pytest.mark.parametrize("period", [20.0, 120.0, 500.0])
def test_flapping_load_moves_the_count_once(period: float) -> None:
    # Demand swings between 2.6 and 1.4 replicas' worth of the target (130% and 70% at a 50%
    # target) every half period, for an hour, sampled every 5 s.
    scaler = Autoscaler(Replicas(1, 10), Autoscale((CPU50,), scale_down_delay=300.0))
    demand = [(t, 130.0 if (t // (period / 2)) % 2 == 0 else 70.0) for t in range(0, 3600, 5)]
    counts = run_demand(scaler, 2, [(float(t), d) for t, d in demand])
    changes = sum(1 for a, b in zip([2, *counts], counts, strict=False) if a != b)
    assert changes == 1
    assert counts[-1] == 3


def test_flapping_then_quiet_goes_down_once_after_the_window() -> None:
    scaler = Autoscaler(Replicas(1, 10), Autoscale((CPU50,), scale_down_delay=300.0))
    swings = [(float(t), 130.0 if (t // 30) % 2 == 0 else 70.0) for t in range(0, 600, 5)]
    quiet = [(float(t), 40.0) for t in range(600, 1200, 5)]
    counts = run_demand(scaler, 2, swings + quiet)
    times = [t for t, _ in swings + quiet]
    changes = [(times[i], counts[i]) for i in range(1, len(counts)) if counts[i] != counts[i - 1]]
    # Up at the first swing and held there while the load swings. Once quiet, the count
    # steps down as the window forgets: the last proposal of 3 (t=565, demand 130%) leaves it
    # at t=865, the last proposal of 2 (t=595, demand 70%) at t=895.
    assert counts[0] == 3
    assert changes == [(865.0, 2), (895.0, 1)]


def test_reconfigure_keeps_the_window() -> None:
    scaler = Autoscaler(Replicas(1, 10), Autoscale((CPU50,), scale_down_delay=300.0))
    assert scaler.observe(0, LoadSample(replicas=2, cpu=100.0, **BUSY)).desired == 4
    scaler.reconfigure(Replicas(1, 10), Autoscale((CPU50,), scale_down_delay=600.0))
    # The t=0 proposal (4) still holds the count at t=500 under the longer window.
    assert scaler.observe(500, LoadSample(replicas=4, cpu=10.0, **BUSY)).desired == 4
    assert scaler.observe(601, LoadSample(replicas=4, cpu=10.0, **BUSY)).desired == 1


def test_readings_show_every_metric() -> None:
    scaler = Autoscaler(Replicas(1, 10), Autoscale((CPU50, GPU_UTIL_80), scale_down_delay=0.0))
    decision = scaler.observe(0, LoadSample(replicas=2, cpu=75.0, **BUSY))
    assert [(r.metric.metric, r.observed, r.proposal) for r in decision.readings] == [
        (MetricName.CPU, 75.0, 3),
        (MetricName.GPU_UTILIZATION, None, None),
    ]
    assert decision.readings[1].text == "gpu_utilization not measured"
    assert "window=[" in repr(scaler)


# -- metric = "prometheus": a gauge scraped from the replicas, per replica ---------------------

WAITING = "vllm:num_requests_waiting"
QUEUE_4 = AutoscaleMetric(MetricName.PROMETHEUS, target=4.0, query=SeriesSelector(WAITING))


def waiting(per_replica: float) -> dict[str, Any]:
    return {"scraped": {WAITING: per_replica}}


PROMETHEUS_CASES = [
    Case(
        "up by the gauge's ratio",
        (QUEUE_4,),
        start=1,
        steps=[(0, {**BUSY, **waiting(10)}, 3)],
        reasons={0: "vllm:num_requests_waiting avg 10 > target 4: 1 -> 3"},
    ),
    Case(
        "unknown (no scrape answered) proposes nothing",
        (QUEUE_4,),
        start=2,
        steps=[(0, BUSY, 2), (400, BUSY, 2)],
        reasons={0: "no load figures: stays at 2"},
    ),
    Case(
        "down only after the delay",
        (QUEUE_4,),
        start=4,
        steps=[
            (0, {**BUSY, **waiting(4)}, 4),
            (10, {**BUSY, **waiting(1)}, 4),
            (300, {**BUSY, **waiting(1)}, 1),
        ],  # fmt: skip
        reasons={
            1: "vllm:num_requests_waiting avg 1 < target 4: stays at 4 until the load is lower "
            "for 5m (1 wanted)",
            2: "vllm:num_requests_waiting avg 1 < target 4 for 5m: 4 -> 1",
        },
    ),
    Case(
        "within the tolerance: stays",
        (QUEUE_4,),
        start=3,
        steps=[(0, {**BUSY, **waiting(4.3)}, 3)],
        reasons={0: "vllm:num_requests_waiting avg 4.3 ~ target 4: stays at 3"},
    ),
    Case(
        "the highest proposal wins over a built-in metric",
        (CPU50, QUEUE_4),
        start=2,
        steps=[(0, {**BUSY, "cpu": 50.0, **waiting(8)}, 4)],
    ),
    Case(
        "no traffic: a gauge above zero is demand all the same (work the endpoint never saw)",
        (CPU50, QUEUE_4),
        start=1,
        delay=0.0,
        steps=[(0, {**IDLE, "cpu": 90.0, **waiting(10)}, 3)],
        reasons={0: "vllm:num_requests_waiting avg 10 > target 4: 1 -> 3"},
    ),
    Case(
        "no traffic and an empty queue: to zero after a window",
        (QUEUE_4,),
        start=1,
        min=0,
        steps=[
            (0, {**BUSY, **waiting(4)}, 1),
            (10, {**IDLE, **waiting(0)}, 1),
            (300, {**IDLE, **waiting(0)}, 0),
        ],  # fmt: skip
        reasons={2: "no traffic for 5m: 1 -> 0"},
    ),
    Case(
        "no traffic and no scrape: the idle zero stands",
        (QUEUE_4,),
        start=2,
        delay=0.0,
        steps=[(0, IDLE, 1)],
        reasons={0: "no traffic: 2 -> 1"},
    ),
]


@pytest.mark.parametrize("case", PROMETHEUS_CASES, ids=[c.id for c in PROMETHEUS_CASES])
def test_prometheus_policy_table(case: Case) -> None:
    test_policy_table(case)


def test_a_stale_queue_asks_for_the_same_count_again() -> None:
    """One ready replica with 10 waiting, seen at every round while the new replicas start:
    its total read per replica of the count being decided asks for 3 each time, never more."""
    scaler = Autoscaler(Replicas(1, 10), Autoscale((QUEUE_4,), scale_down_delay=60.0))
    current = 1
    for now in range(5):
        load = DeploymentLoad(window_s=3.0, samples=1, replicas=1, requests_per_s=5.0,
                              scraped={WAITING: 10.0})  # fmt: skip
        current = scaler.observe(float(now), sample_of(load, current)).desired
        assert current == 3, now


def test_sample_of_reads_a_total_per_replica_of_the_count() -> None:
    load = DeploymentLoad(window_s=3.0, samples=0, replicas=0, scraped={WAITING: 12.0})
    assert sample_of(load, 3).scraped == {WAITING: 4.0}  # even with no sampler figures yet
    assert sample_of(load, 0).scraped == {WAITING: 12.0}
    assert sample_of(None, 2).scraped == {}
