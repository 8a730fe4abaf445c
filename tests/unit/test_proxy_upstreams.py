"""The round robin, and its short-lived `avoid` marks (connects that failed or hung)."""

from __future__ import annotations

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
