"""The balancer's admission (proxy/queue.py through Balancer.acquire/release), on trio's
MockClock: slots, the FIFO queue, its deadlines and refusals, nothing leaked on cancel."""

from __future__ import annotations

import trio
import trio.testing

from config.spec import Outlier
from proxy.balancer import Balancer, EndpointTimeouts
from proxy.queue import Refusal
from proxy.upstreams import Upstream

A, B = Upstream("a", "127.0.0.1", 9001), Upstream("b", "127.0.0.1", 9002)


def balancer(cap: int | None = 1, *, max_queue: int = 10, queue_timeout: float = 5.0) -> Balancer:
    b = Balancer("t", EndpointTimeouts(), None)
    b.set_admission(
        max_concurrency=cap,
        max_queue=max_queue,
        queue_timeout=queue_timeout,
        least_request=False,
        retry_all=False,
        outlier=Outlier(consecutive_5xx=0, failures=0),
    )
    return b


async def test_a_freed_slot_goes_to_the_first_waiter_not_a_newcomer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    b = balancer()
    b.set_upstreams([A])
    assert await b.acquire([]) == A
    got: list[object] = []
    async with trio.open_nursery() as nursery:
        for i in range(3):
            nursery.start_soon(lambda i=i: _take(b, got, i))
            await trio.testing.wait_all_tasks_blocked()
        assert b.waiting == 3
        assert b.try_take([]) is None  # a newcomer: the queue goes first
        for i in range(3):
            b.release(A)  # the holder's request ends: its slot goes to the next waiter
            await trio.testing.wait_all_tasks_blocked()
            assert got == list(range(i + 1))
    b.release(A)  # the last one's request ends
    assert b.slots.taken == {}


async def _take(b: Balancer, got: list[object], i: int) -> None:
    if await b.acquire([]) == A:
        got.append(i)


async def test_queue_timeout_and_a_full_queue_are_429_and_no_replica_503(
    autojump_clock: trio.testing.MockClock,
) -> None:
    b = balancer(max_queue=1, queue_timeout=5.0)
    assert await b.acquire([]) == Refusal(503, "no ready replica")
    b.set_upstreams([A])
    assert await b.acquire([]) == A
    results: list[object] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _append(b, results))
        await trio.testing.wait_all_tasks_blocked()
        full = await b.acquire([])
        assert isinstance(full, Refusal) and full.status == 429 and "queue is full" in full.message
    assert isinstance(results[0], Refusal) and results[0].status == 429
    assert "in time" in results[0].message
    summary = b.slots.wait_times.summary(trio.current_time())
    assert summary.count == 1 and summary.p50 is not None and 4.5 < summary.p50 < 5.5


async def _append(b: Balancer, results: list[object]) -> None:
    results.append(await b.acquire([]))


async def test_a_slot_granted_to_a_cancelled_waiter_is_given_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    b = balancer()
    b.set_upstreams([A])
    assert await b.acquire([]) == A
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:

            async def wait_then_lose_it() -> None:
                await b.acquire([])

            nursery.start_soon(wait_then_lose_it)
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()  # the waiter is cancelled, and before it runs again...
            b.release(A)  # ...the freed slot is granted to it: it must give it back
    assert b.slots.taken == {} and b.waiting == 0


async def test_cold_wait_turns_into_a_slot_wait_with_its_own_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    b = balancer(queue_timeout=2.0)
    b.hold_max_wait = 100.0
    results: list[object] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _append(b, results))
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(50)  # waiting for a replica to start
        b.slots.take(A)  # the first replica comes, already full
        b.set_upstreams([A])
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
    assert isinstance(results[0], Refusal) and results[0].status == 429
    assert 1.9 < trio.current_time() - start < 2.1  # queue_timeout from when it came


async def test_draining_refuses_every_waiter_and_retries_do_not_queue_behind_others(
    autojump_clock: trio.testing.MockClock,
) -> None:
    b = balancer()
    b.set_upstreams([A, B])
    assert await b.acquire([]) == A
    assert await b.acquire([]) == B
    results: list[object] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _append(b, results))
        await trio.testing.wait_all_tasks_blocked()
        b.release(B)  # granted to the waiter
        await trio.testing.wait_all_tasks_blocked()
        assert results == [B]
        # A retry that tried B finds A full: it waits (for A), not behind nobody.
        nursery.start_soon(lambda: _retry(b, results, [B]))
        await trio.testing.wait_all_tasks_blocked()
        assert b.waiting == 1
        b.begin_drain()
    assert results[1] == Refusal(503, "shutting down")


async def _retry(b: Balancer, results: list[object], tried: list[Upstream]) -> None:
    results.append(await b.acquire(tried))
