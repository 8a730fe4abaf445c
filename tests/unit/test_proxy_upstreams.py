"""The round robin, and its short-lived `avoid` marks (connects that failed or hung)."""

from __future__ import annotations

import random

from proxy.upstreams import RoundRobin, Upstream

A, B, C = (Upstream(n, "127.0.0.1", 9000 + i) for i, n in enumerate("abc"))


def picks(rr: RoundRobin, n: int, now: float = 0.0) -> list[str]:
    out = []
    for _ in range(n):
        up = rr.pick((), now)
        assert up is not None
        out.append(up.replica_id)
    return out


def test_in_turn_and_excluding_tried() -> None:
    rr = RoundRobin([A, B, C])
    assert picks(rr, 4) == ["a", "b", "c", "a"]
    assert rr.pick([B, C]) == A
    assert rr.pick([A, B, C]) is None
    assert RoundRobin().pick() is None


def test_an_avoided_upstream_is_skipped_until_its_mark_expires() -> None:
    rr = RoundRobin([A, B, C])
    rr.avoid(B, until=10.0)
    assert picks(rr, 4, now=5.0) == ["a", "c", "a", "c"]
    assert picks(rr, 3, now=10.0) == ["a", "b", "c"]  # expired: back in turn
    assert rr.avoided(10.0) == frozenset()


def test_an_avoided_upstream_is_still_picked_when_nothing_else_is_left() -> None:
    rr = RoundRobin([A, B])
    rr.avoid(A, until=10.0)
    rr.avoid(B, until=10.0)
    assert rr.pick((), 1.0) in (A, B)
    assert rr.pick([B], 1.0) == A  # never refuse a request for a mark


def test_trust_and_set_forget_marks() -> None:
    rr = RoundRobin([A, B])
    rr.avoid(A, until=10.0)
    rr.trust(A)
    assert rr.avoided(1.0) == frozenset()
    rr.avoid(A, until=10.0)
    rr.avoid(B, until=10.0)
    rr.set([B, C])  # A left the set: its mark goes with it
    assert rr.avoided(1.0) == frozenset({B})
    rr.avoid(A, until=10.0)  # not in the set: ignored
    assert rr.avoided(1.0) == frozenset({B})


def test_a_later_mark_wins() -> None:
    rr = RoundRobin([A, B])
    rr.avoid(A, until=10.0)
    rr.avoid(A, until=5.0)
    assert rr.avoided(7.0) == frozenset({A})


def test_choose_skips_full_replicas_and_least_request_prefers_the_idle() -> None:
    rr = RoundRobin([A, B, C])
    taken = {A: 2}
    picks = [rr.choose((), 0.0, taken, 2, False) for _ in range(4)]
    assert A not in picks  # at its cap
    two = RoundRobin([A, B])
    assert {two.choose((), 0.0, {A: 1}, None, True) for _ in range(20)} == {B}
    # Power of two choices over three: the idle one wins whenever it is one of the two
    # (2 in 3 picks on average), never a busier one over it.
    random.seed(14)
    picks = [rr.choose((), 0.0, {A: 5, B: 0, C: 5}, None, True) for _ in range(300)]
    assert 150 < picks.count(B) < 260
    assert rr.choose((A, B, C), 0.0, {}, None, True) is None


def test_choose_sets_aside_ejected_ones_while_others_have_room() -> None:
    rr = RoundRobin([A, B])
    assert {rr.choose((), 0.0, {}, None, False, out={A}) for _ in range(6)} == {B}
    assert {rr.choose((), 0.0, {}, None, True, out={A}) for _ in range(6)} == {B}
    # B full: the ejected one serves rather than nobody.
    assert rr.choose((), 0.0, {B: 1}, 1, False, out={A}) == A
