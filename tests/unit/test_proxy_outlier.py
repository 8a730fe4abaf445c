"""Passive health's rules (proxy/outlier.py), pure: times are given, nothing waits."""

from __future__ import annotations

from config.spec import Outlier
from proxy.outlier import Outliers
from proxy.upstreams import Upstream

A, B, C, D = (Upstream(n, "127.0.0.1", 9000 + i) for i, n in enumerate("abcd"))


def outliers(rules: Outlier, *members: Upstream) -> tuple[Outliers, list[tuple[str, float]]]:
    o = Outliers(rules)
    said: list[tuple[str, float]] = []
    o.on_eject = lambda up, why, seconds: said.append((up.replica_id, seconds))
    o.retain(members or (A, B))
    return o, said


def test_consecutive_5xx_eject_and_a_success_resets_the_run() -> None:
    o, said = outliers(Outlier(consecutive_5xx=3, failures=0))
    for status in (500, 503, 200, 500, 502):
        o.record(A, status, False, 1.0)
    assert o.out == set()  # the 200 broke the run
    o.record(A, 500, False, 1.0)
    assert o.out == {A} and said == [("a", 30.0)]


def test_failures_count_within_the_window_only() -> None:
    o, _ = outliers(Outlier(consecutive_5xx=0, failures=3, window=10.0))
    o.record(A, 504, True, 0.0)
    o.record(A, 504, True, 5.0)
    o.record(A, 504, True, 10.5)  # the first one has left the window
    assert o.out == set()
    o.record(A, 502, True, 11.0)
    assert o.out == {A}


def test_ejection_time_doubles_on_repeats_up_to_the_max_and_is_forgiven() -> None:
    rules = Outlier(consecutive_5xx=1, failures=0, ejection_time=10.0, max_ejection_time=25.0)
    o, said = outliers(rules)
    now = 0.0
    for _ in range(3):
        o.record(A, 500, False, now)
        now += 100  # well past any ejection
        o.due_back(now)  # returns (no probe asked for)
        now += 1
    assert [s for _, s in said] == [10.0, 20.0, 25.0]
    # Back for max_ejection_time without another: the next is a first one again.
    o.record(A, 500, False, now + 30.0)
    assert said[-1] == ("a", 10.0)


def test_never_past_the_percentage_and_never_the_last() -> None:
    o, _ = outliers(Outlier(consecutive_5xx=1, failures=0, max_ejected_percent=50.0), A, B, C, D)
    for up in (A, B, C, D):
        o.record(up, 500, False, 0.0)
    assert len(o.out) == 2
    one, _ = outliers(Outlier(consecutive_5xx=1, failures=0, max_ejected_percent=100.0), A)
    one.record(A, 500, False, 0.0)
    assert one.out == set()


def test_with_probes_it_returns_only_at_a_probe_after_its_time() -> None:
    o, _ = outliers(Outlier(consecutive_5xx=1, failures=0, ejection_time=10.0))
    o.by_probe = True
    back: list[str] = []
    o.on_return = lambda up: back.append(up.replica_id)
    o.record(A, 500, False, 0.0)
    o.probe_passed(A, 5.0)  # too early
    assert o.out == {A}
    assert o.due_back(9.0) == []
    assert o.due_back(10.0) == [A]  # its probe is asked for, once
    assert o.due_back(11.0) == []
    assert o.out == {A}
    o.probe_passed(A, 11.0)
    assert o.out == set() and back == ["a"]


def test_a_replica_that_leaves_the_set_is_forgotten() -> None:
    o, _ = outliers(Outlier(consecutive_5xx=1, failures=0))
    o.record(A, 500, False, 0.0)
    o.retain((B,))
    assert o.out == set()
    o.record(B, 200, False, 0.0)
    assert repr(o) == "<Outliers out=0/1>"
