"""The swap's victim choice, its NVML settle check, the idle TTL and the cold start's cancel
(all pure), and the board's asks."""

from __future__ import annotations

import dataclasses
import functools

import pytest

from daemon.gpu.fake import GiB, fake_gpus
from daemon.gpu.model import GpuSample
from daemon.gpu.placement import Assignment, GpuRequest
from daemon.scaling.board import ASK_TIMEOUT, SwapBoard, Tenant
from daemon.scaling.idle import Activity, ColdStart, cancel_due, cold_start, unload_due
from daemon.scaling.swap import (
    Candidate,
    NoVictim,
    SwapChoice,
    Woken,
    choose_victims,
    settled,
)

ONE_GPU = GpuRequest(gpus=1)
WOKEN = Woken("w", ONE_GPU, priority=0, group="chat")


def holding(name: str, *gpus: int, memory: int | None = None) -> Candidate:
    devices = tuple(f"nvidia.com/gpu={g}" for g in gpus)
    return Candidate(name, (Assignment(f"{name}/r1", devices, memory),), idle_for=60.0)


def chosen(
    candidates: list[Candidate], woken: Woken = WOKEN, gpus: int = 1, memory: int = 24 * GiB
) -> list[str] | str:
    held = [a for c in candidates for a in c.holds]
    result = choose_victims(woken, candidates, fake_gpus(gpus, memory=memory), held)
    if isinstance(result, NoVictim):
        return result.reason
    return [v.deployment for v in result.victims]


def test_an_idle_min_zero_deployment_is_swapped_out() -> None:
    assert chosen([holding("a", 0)]) == ["a"]


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"min_replicas": 1}, "a has replicas.min = 1"),
        ({"autoscaled": False}, "a has its count pinned (berth scale)"),
        ({"in_flight": 1}, "a has 1 request in flight"),
        ({"in_flight": 1, "waiting": 1}, "a has 1 request in flight"),
        ({"min_idle": 120.0}, "a has been idle 1m < min_idle 2m"),
        ({"priority": 1}, "a has priority 1 > 0"),
        ({"leaving": True}, "a is being swapped out already"),
    ],
)
def test_each_rule_keeps_a_deployment(change: dict[str, object], why: str) -> None:
    got = chosen([dataclasses.replace(holding("a", 0), **change)])  # type: ignore[arg-type]
    assert isinstance(got, str) and got.startswith(why), got


def test_idle_exactly_min_idle_may_go_and_equal_priority_may_go() -> None:
    a = dataclasses.replace(holding("a", 0), min_idle=60.0, priority=0)
    assert chosen([a]) == ["a"]


def test_lowest_priority_first_then_least_recently_used() -> None:
    low = dataclasses.replace(holding("low", 0), priority=-1, idle_for=5.0)
    old = dataclasses.replace(holding("old", 1), idle_for=500.0)
    new = dataclasses.replace(holding("new", 2), idle_for=50.0)
    woken = dataclasses.replace(WOKEN, group=None)
    assert chosen([new, old, low], woken, gpus=3) == ["low"]
    assert chosen([new, old], woken, gpus=3) == ["old"]


def test_the_same_group_goes_only_when_the_others_cannot_free_enough() -> None:
    mate = dataclasses.replace(holding("mate", 0), group="chat", idle_for=900.0, priority=-5)
    other = dataclasses.replace(holding("other", 1), group="embed", idle_for=1.0)
    assert chosen([mate, other], gpus=2) == ["other"]
    busy = dataclasses.replace(other, in_flight=2)
    assert chosen([mate, busy], gpus=2) == ["mate"]
    # Two GPUs asked: the group mate goes too, as the outsider alone is not enough.
    two = dataclasses.replace(WOKEN, request=GpuRequest(gpus=2))
    assert chosen([mate, other], two, gpus=2) == ["other", "mate"]


def test_no_group_is_no_group() -> None:
    woken = dataclasses.replace(WOKEN, group=None)
    a = dataclasses.replace(holding("a", 0), group=None, idle_for=10.0)
    b = dataclasses.replace(holding("b", 1), group=None, idle_for=20.0)
    assert chosen([a, b], woken, gpus=2) == ["b"]


def test_only_as_many_victims_as_the_fit_needs() -> None:
    # Three 8 GiB shares on a 24 GiB GPU; the woken one asks 10 GiB: two must go, not three.
    shares = [
        dataclasses.replace(holding(n, 0, memory=8 * GiB), idle_for=t)
        for n, t in (("a", 300.0), ("b", 200.0), ("c", 100.0))
    ]
    woken = Woken("w", GpuRequest(gpu_memory=10 * GiB))
    assert chosen(shares, woken) == ["a", "b"]
    # Either of two whole GPUs would do: only one goes, the least recently used.
    x = dataclasses.replace(holding("x", 1), idle_for=900.0)
    y = dataclasses.replace(holding("y", 0), idle_for=10.0)
    assert chosen([x, y], dataclasses.replace(WOKEN, group=None), gpus=2) == ["x"]


def test_a_victim_the_fit_does_not_need_is_dropped() -> None:
    # 2 GPUs, a shared GPU 0 (a: 8 GiB, b: 20 GiB) and a whole GPU 1 held by a min = 1 one.
    a = dataclasses.replace(holding("a", 0, memory=8 * GiB), idle_for=900.0)
    b = dataclasses.replace(holding("b", 0, memory=20 * GiB), idle_for=100.0)
    kept = dataclasses.replace(holding("kept", 1), min_replicas=1)
    woken = Woken("w", GpuRequest(gpu_memory=15 * GiB))
    # In LRU order a goes first (not enough: 4 + 8 = 12 GiB unclaimed), then b (enough);
    # without a, b alone frees 20 GiB: a is dropped.
    assert chosen([a, b, kept], woken, gpus=2) == ["b"]


def test_nothing_evictable_says_why_per_deployment() -> None:
    busy = dataclasses.replace(holding("a", 0), in_flight=1)
    pinned = dataclasses.replace(holding("b", 1), min_replicas=1)
    got = chosen([busy, pinned], gpus=2)
    assert got == "a has 1 request in flight; b has replicas.min = 1"
    assert chosen([]) == "no other deployment with replicas.min = 0 holds a GPU"


def test_evicting_every_idle_one_that_is_not_enough_is_no_swap() -> None:
    small = holding("a", 0, memory=4 * GiB)
    woken = Woken("w", GpuRequest(gpus=1))
    kept = dataclasses.replace(holding("b", 0, memory=4 * GiB), min_replicas=1)
    assert (
        chosen([small, kept], woken) == "b has replicas.min = 1; evicting a would not free enough"
    )


def test_the_woken_one_itself_and_deployments_holding_nothing_are_no_candidates() -> None:
    nothing = Candidate("empty", ())
    itself = dataclasses.replace(holding("w", 0))
    assert chosen([nothing, itself]) == "no other deployment with replicas.min = 0 holds a GPU"


def test_the_event_text_names_victim_whom_why_and_inputs() -> None:
    a = dataclasses.replace(holding("a", 0), idle_for=42.0, min_idle=30.0)
    choice = choose_victims(WOKEN, [a], fake_gpus(1), list(a.holds))
    assert isinstance(choice, SwapChoice)
    text = choice.describe(WOKEN, "is pending: needs 1 GPU, 0 free (GPU 0 held by a/r1)")
    assert text == (
        "swapping out a for w: its new replica is pending: needs 1 GPU, 0 free (GPU 0 held by "
        "a/r1); victim a (idle 42s, min_idle 30s, priority 0 <= 0)"
    )


def sample(index: int, used: int, total: int = 24 * GiB) -> GpuSample:
    return GpuSample(
        index, f"nvidia.com/gpu={index}", memory_used_bytes=used, memory_total_bytes=total
    )


def test_settled_waits_for_nvml_free_memory_where_it_reports_it() -> None:
    devices = ["nvidia.com/gpu=0"]
    assert settled(ONE_GPU, devices, [])  # no NVML: the holdings alone decide
    assert not settled(ONE_GPU, devices, [sample(0, 20 * GiB)])
    assert settled(ONE_GPU, devices, [sample(0, 1 * GiB)])
    share = GpuRequest(gpu_memory=8 * GiB)
    two = ["nvidia.com/gpu=0", "nvidia.com/gpu=1"]
    assert not settled(share, two, [sample(0, 20 * GiB), sample(1, 18 * GiB)])
    assert settled(share, two, [sample(0, 20 * GiB), sample(1, 10 * GiB)])
    assert not settled(GpuRequest(gpus=2), two, [sample(0, 0), sample(1, 10 * GiB)])


# -- the idle unload and the cold start's cancel --------------------------------------------


def test_the_ttl_counts_from_the_last_request_not_from_the_start() -> None:
    ttl = 600.0
    quiet = Activity(last_request=1000.0)
    assert unload_due(ttl, quiet, since=0.0, now=1599.0) is None
    assert unload_due(ttl, quiet, since=0.0, now=1600.0) == 600.0
    # No request since the autoscaler began (a berthd restart): from then, not at once.
    assert unload_due(ttl, Activity(), since=500.0, now=1099.0) is None
    assert unload_due(ttl, Activity(), since=500.0, now=1100.0) == 600.0
    # A request long ago, before the autoscaler began: from its start.
    assert unload_due(ttl, Activity(last_request=10.0), since=500.0, now=1000.0) is None


def test_no_unload_with_a_request_in_flight_or_queued_or_without_a_ttl() -> None:
    long_ago = 0.0
    assert unload_due(600.0, Activity(in_flight=1, last_request=long_ago), 0.0, 9999.0) is None
    assert unload_due(600.0, Activity(waiting=1, last_request=long_ago), 0.0, 9999.0) is None
    assert unload_due(None, Activity(last_request=long_ago), 0.0, 9999.0) is None


def test_a_cold_start_is_a_scale_from_zero_that_waiters_caused() -> None:
    assert cold_start(0, 1, 2, now=5.0) == ColdStart(since=5.0, waiting=2)
    assert cold_start(0, 1, 0, now=5.0) is None  # min, a rollout: no waiter
    assert cold_start(1, 2, 3, now=5.0) is None  # a scale-up, not from zero
    assert ColdStart(5.0, 2).reason(1) == "woken by 2 waiting requests: 0 -> 1"


def test_a_cold_start_is_cancelled_only_when_every_waiter_left_before_ready() -> None:
    cold = ColdStart(since=0.0, waiting=1)
    assert cancel_due(cold, Activity(), any_ready=False)
    assert not cancel_due(cold, Activity(waiting=1, in_flight=1), any_ready=False)
    assert not cancel_due(cold, Activity(in_flight=1), any_ready=False)  # being served
    assert not cancel_due(cold, Activity(), any_ready=True)
    assert not cancel_due(None, Activity(), any_ready=False)
    assert cold.cancelled_reason(3.25, 1) == (
        "every waiting request left 3.2s into the cold start, before a replica was ready: "
        "1 -> 0 (the starting replica is removed)"
    )


# -- the board -------------------------------------------------------------------------------


def tenant(**change: object) -> Tenant:
    base = Tenant(0, True, 1, 0, None, 0.0, Activity(), 30.0)
    return dataclasses.replace(base, **change)  # type: ignore[arg-type]


def test_the_board_reads_views_live_and_carries_asks() -> None:
    board = SwapBoard()
    views = {"a": tenant(), "b": tenant(activity=Activity(in_flight=1))}
    nudged: list[str] = []
    for name in views:
        board.join(name, functools.partial(views.get, name), functools.partial(nudged.append, name))
    board.join("w", lambda: None, lambda: nudged.append("w"))
    holdings = {
        "a/r1": Assignment("a/r1", ("nvidia.com/gpu=0",)),
        "b/r1": Assignment("b/r1", ("nvidia.com/gpu=1",)),
        "gone/r1": Assignment("gone/r1", ("nvidia.com/gpu=2",)),
    }
    got = {c.deployment: c for c in board.candidates(holdings, now=0.0)}
    assert got["a"].idle_for == 30.0 and got["b"].in_flight == 1
    assert not got["gone"].autoscaled  # no worker for it: nothing can scale it to zero
    board.evict(["a"], "w", "why", now=10.0)
    assert nudged == ["a"] and board.last_swap is not None and board.swaps_total == 1
    assert board.asked("a", 11.0) is not None and board.state("a", "w") == "asked"
    assert {c.deployment: c for c in board.candidates(holdings, 11.0)}["a"].leaving
    assert board.asked("a", 10.0 + ASK_TIMEOUT + 1) is None  # void once old
    board.answer("a", acted=True)
    assert nudged == ["a", "w"] and board.state("a", "w") == "acted"
    assert board.asked("a", 11.0) is None
    board.finish(["a"], "w")
    assert board.state("a", "w") is None
    views["a"] = tenant(target=0)  # going to zero already: not asked again
    assert {c.deployment: c for c in board.candidates(holdings, 12.0)}["a"].leaving


def test_a_worker_that_leaves_keeps_a_newer_one_of_the_same_name() -> None:
    board = SwapBoard()
    old, new = (lambda: tenant()), (lambda: tenant(priority=3))
    board.join("a", old, lambda: None)
    board.join("a", new, lambda: None)
    board.leave("a", old)
    holdings = {"a/r1": Assignment("a/r1", ("nvidia.com/gpu=0",))}
    assert board.candidates(holdings, 0.0)[0].priority == 3
