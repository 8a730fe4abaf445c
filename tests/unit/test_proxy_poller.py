"""The poller's watchdog: timeouts on its coarse clock, and no wake-ups while nothing waits.

A loopback TCP pair is the connection (real descriptors in the real epoll set); time is
a MockClock, so "an hour idle" costs nothing and the watchdog's steps can be counted.
"""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from proxy.poller import WAKES_PER_POLL, Poller
from proxy.sockets import Conn, Timeout


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        theirs = socket.create_connection(listener.getsockname(), timeout=5)
        ours, _ = listener.accept()
    return ours, theirs


class StepCounter(trio.abc.Instrument):
    def __init__(self) -> None:
        self.steps: dict[str, int] = {}

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task.name] = self.steps.get(task.name, 0) + 1

    def watchdog(self) -> int:
        return sum(n for name, n in self.steps.items() if name.endswith("Poller._watch"))


@pytest.fixture
def mock_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def test_an_idle_poller_wakes_nobody_and_a_wait_after_idle_gets_its_whole_timeout(
    mock_clock: trio.testing.MockClock,
) -> None:
    counter = StepCounter()
    trio.lowlevel.add_instrument(counter)
    poller = Poller(tick=0.5)
    ours, theirs = tcp_pair()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(poller.run)
            conn = Conn(ours, "test", poller)
            await trio.sleep(3600)  # an hour with nothing waiting
            assert counter.watchdog() <= 2, counter.steps  # parked, not ticking 7200 times

            # The coarse clock is an hour old: a wait begun now still gets its 5 s.
            started = trio.current_time()
            with pytest.raises(Timeout):
                await conn.wait_readable(5.0)
            waited = trio.current_time() - started
            assert 5.0 - poller.tick <= waited <= 5.0 + poller.tick

            # Once nothing waits again, the watchdog parks again.
            before = counter.watchdog()
            await trio.sleep(600)
            assert counter.watchdog() - before <= 2
            nursery.cancel_scope.cancel()
    finally:
        trio.lowlevel.remove_instrument(counter)
        theirs.close()


async def test_a_wait_that_is_answered_wakes_on_data_and_expires_nothing(
    mock_clock: trio.testing.MockClock,
) -> None:
    poller = Poller(tick=0.5)
    ours, theirs = tcp_pair()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(poller.run)
            conn = Conn(ours, "test", poller)
            await trio.sleep(100)
            theirs.send(b"x")
            await conn.wait_readable(1.0)  # readable at once: no Timeout
            assert conn.sock.recv(1) == b"x"
            nursery.cancel_scope.cancel()
    finally:
        theirs.close()


async def test_a_shorter_tick_applies_at_once_not_after_the_longer_one(
    mock_clock: trio.testing.MockClock,
) -> None:
    """The endpoint's timeouts changed (300 s -> 40 ms): a wait begun just after `retick`
    times out within the new tick of its time, not after the rest of the old 0.5 s tick."""
    poller = Poller(tick=0.5)
    ours, theirs = tcp_pair()
    other, other_peer = tcp_pair()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(poller.run)
            long_wait = Conn(other, "long", poller)
            nursery.start_soon(long_wait.wait_readable, 300.0)  # keeps the watchdog ticking
            await trio.sleep(1.1)  # mid-tick: the watchdog's sleep ends at 1.5
            poller.retick(0.01)
            assert poller.tick == 0.01
            started = trio.current_time()
            with pytest.raises(Timeout):
                await Conn(ours, "short", poller).wait_readable(0.04)
            waited = trio.current_time() - started
            assert 0.04 - 0.01 <= waited <= 0.04 + 0.01 + 1e-9, waited
            nursery.cancel_scope.cancel()
    finally:
        theirs.close()
        other_peer.close()


class Parked:
    """A task parked as a callback's session is (`wait_task_rescheduled`), woken through
    `Poller.wake_soon`; its abort answers FAILED once a wake-up was asked for."""

    def __init__(self) -> None:
        self.task: trio.lowlevel.Task | None = None
        self.parked = False
        self.woken = False
        self.scope = trio.CancelScope()

    def _abort(self, _: object) -> trio.lowlevel.Abort:
        if not self.parked:
            return trio.lowlevel.Abort.FAILED
        self.parked = False
        return trio.lowlevel.Abort.SUCCEEDED

    async def park(self) -> None:
        with self.scope:
            self.task = trio.lowlevel.current_task()
            self.parked = True
            await trio.lowlevel.wait_task_rescheduled(self._abort)
            self.woken = True
            await trio.sleep_forever()  # a cancellation lands here, after the wake-up

    def wake(self, poller: Poller) -> None:
        self.parked = False
        assert self.task is not None
        poller.wake_soon(self.task)


class Batches(trio.abc.Instrument):
    """The most task steps between two looks at I/O (one scheduler batch)."""

    def __init__(self) -> None:
        self.steps = 0
        self.most = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1
        self.most = max(self.most, self.steps)

    def after_io_wait(self, timeout: float) -> None:
        self.steps = 0


async def test_a_burst_of_wake_ups_is_spread_over_polls_and_every_one_is_made(
    mock_clock: trio.testing.MockClock,
) -> None:
    poller = Poller(tick=0.5)
    sessions = [Parked() for _ in range(WAKES_PER_POLL * 10)]
    async with trio.open_nursery() as nursery:
        await nursery.start(poller.run)
        for s in sessions:
            nursery.start_soon(s.park)
        await trio.testing.wait_all_tasks_blocked()
        batches = Batches()
        trio.lowlevel.add_instrument(batches)
        for s in sessions:  # as callbacks would, all in one step
            s.wake(poller)
        # One cancelled while its wake-up is queued: it is woken all the same (FAILED).
        sessions[-1].scope.cancel()
        for _ in range(1000):  # bounded: a few polls' worth of checkpoints at most
            if all(s.woken for s in sessions):
                break
            await trio.lowlevel.checkpoint()
        assert all(s.woken for s in sessions)
        trio.lowlevel.remove_instrument(batches)
        # Never more than a poll's share of them (and a few other tasks) in one batch:
        # 320 woken at once would make one batch of 320 steps.
        assert batches.most <= WAKES_PER_POLL + 8, batches.most
        nursery.cancel_scope.cancel()
