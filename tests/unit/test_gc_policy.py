"""proxy/gc_policy.py: full collections off CPython's trigger and on a clock instead."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from proxy import gc_policy


@pytest.fixture(autouse=True)
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_configure_freezes_and_turns_automatic_full_collections_off() -> None:
    gc_policy.configure()
    assert gc.get_freeze_count() > 0
    young0, young1, full = gc.get_threshold()
    assert (young0, young1) == (700, 10) and full >= 1_000_000


class Cycle:
    def __init__(self) -> None:
        self.me = self


async def test_collect_forever_frees_cycles_each_period(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gc_policy.configure()
    gc.disable()  # nothing but the policy's own collection may free the cycle
    try:
        Cycle()
        before = gc.get_stats()[2]["collections"]
        with trio.move_on_after(gc_policy.FULL_COLLECTION_S * 2.5):
            await gc_policy.collect_forever()
        assert gc.get_stats()[2]["collections"] == before + 2
    finally:
        gc.enable()
