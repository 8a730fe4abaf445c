"""The store's door: its own thread, whatever else holds trio's threads; how long a call runs."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import trio

from daemon.store.access import StoreAccess
from daemon.store.database import Store


@pytest.fixture
def access(tmp_path: Path) -> StoreAccess:
    return StoreAccess(Store(tmp_path / "berth.db"))


async def test_store_calls_go_on_while_others_hold_every_default_thread(
    access: StoreAccess,
) -> None:
    """A wedged driver ties up threads (NVML calls that never return): the store has a
    thread of its own, so berthd's state keeps being read and written."""
    default = trio.to_thread.current_default_thread_limiter()
    release = threading.Event()
    saved = default.total_tokens
    default.total_tokens = 2
    try:
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(trio.to_thread.run_sync, release.wait)
            try:
                await trio.testing.wait_all_tasks_blocked()
                assert default.borrowed_tokens == 2
                with trio.fail_after(5):
                    for n in range(20):
                        await access.call(Store.add_event, "note", f"event {n}")
                    assert len(await access.call(Store.events)) == 20
            finally:
                release.set()
    finally:
        default.total_tokens = saved
        access.store.close()


async def test_stalled_for_is_how_long_the_call_in_flight_runs(access: StoreAccess) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow(store: Store) -> int:
        entered.set()
        release.wait(10)
        return 1

    assert access.stalled_for() == 0.0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(access.call, slow)
        await trio.to_thread.run_sync(entered.wait, 10)
        await trio.sleep(0.2)
        assert access.stalled_for() >= 0.2
        release.set()
    assert access.stalled_for() == 0.0
    access.store.close()
