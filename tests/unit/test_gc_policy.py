"""proxy/gc_policy.py: full collections off CPython's trigger, run after a long period, or
after many closes beside few open connections."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from proxy import gc_policy, poller


@pytest.fixture(autouse=True)
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    if gc_policy._timed in gc.callbacks:
        gc.callbacks.remove(gc_policy._timed)


def test_configure_freezes_and_turns_automatic_full_collections_off() -> None:
    gc_policy.configure()
    assert gc.get_freeze_count() > 0
    young0, young1, full = gc.get_threshold()
    assert (young0, young1) == (700, 10) and full >= 1_000_000


def test_due_counts_closes_against_what_is_open_and_bounds_the_period() -> None:
    due, least = gc_policy.due, gc_policy.MIN_CLOSES
    assert not due(0, 0, 0.0)
    assert not due(least - 1, 0, 60.0)  # too few closes yet
    assert due(least, 0, 0.0)
    # 9,000 streams ending (or held beside closes): no pause while many are open.
    assert not due(9000, 0, 60.0)
    assert not due(least, 9000, 60.0)
    assert due(least * 2, least // 2, 60.0)
    assert due(0, 9000, gc_policy.MAX_PERIOD_S)  # nothing closed: once per period


class Cycle:
    def __init__(self) -> None:
        self.me = self


def full_collections() -> int:
    return int(gc.get_stats()[2]["collections"])


async def test_held_connections_alone_get_one_full_collection_per_period(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gc_policy.configure()
    gc.disable()  # nothing but the policy's own collection may run
    try:
        Cycle()
        before = full_collections()
        with trio.move_on_after(gc_policy.MAX_PERIOD_S * 2.5):
            await gc_policy.collect_forever()
        assert full_collections() == before + 2
    finally:
        gc.enable()


async def test_enough_closed_connections_bring_a_full_collection_within_a_check(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gc_policy.configure()
    gc.disable()
    try:
        before = full_collections()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(gc_policy.collect_forever)
            await trio.sleep(gc_policy.CHECK_S * 10)
            assert full_collections() == before  # nothing closed: nothing to free
            poller.closes[0] += gc_policy.MIN_CLOSES  # as if that many connections closed
            poller.opens[0] += gc_policy.MIN_CLOSES
            await trio.sleep(gc_policy.CHECK_S * 1.5)
            assert full_collections() == before + 1
            await trio.sleep(gc_policy.CHECK_S * 10)
            assert full_collections() == before + 1  # counted from that collection on
            nursery.cancel_scope.cancel()
    finally:
        gc.enable()


async def test_a_slow_collection_is_logged_by_the_loop(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    gc_policy.configure()
    gc_policy._slow.append((2, 0.150, 1234))  # as `_timed` notes one
    with caplog.at_level("INFO", logger="proxy"):
        with trio.move_on_after(gc_policy.CHECK_S * 1.5):
            await gc_policy.collect_forever()
    assert "garbage collection (generation 2): 150 ms, 1234 objects freed" in caplog.text
    assert not gc_policy._slow
