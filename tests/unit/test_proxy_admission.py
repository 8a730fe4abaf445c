"""Admission (`proxy.admission`) and the body rate (`proxy.relay.BodyPace`): pure logic,
on trio's MockClock."""

from __future__ import annotations

import pytest
import trio
from trio.testing import MockClock

from proxy.admission import ConnectionBudget, Gate, control_plane_reserve, default_budget
from proxy.balancer import EndpointTimeouts, poller_tick
from proxy.poller import Poller
from proxy.relay import BodyPace, BodyTooSlow


def test_budget_keeps_a_reserve_for_the_control_plane() -> None:
    for limit in (1024, 4096, 20000, 65536, 1 << 20):
        reserve = control_plane_reserve(limit)
        assert reserve >= 256 and reserve >= min(limit // 8, 1024)
        assert 2 * default_budget(limit) + reserve <= limit


async def test_gate_waits_at_its_cap_and_a_close_lets_one_in() -> None:
    gate = Gate(ConnectionBudget(100), max_connections=2)
    gate.opened()
    gate.opened()
    assert not gate.has_room()
    admitted = trio.Event()

    async def accept_loop() -> None:
        await gate.wait_for_room()
        admitted.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_loop)
        await trio.testing.wait_all_tasks_blocked()
        assert not admitted.is_set()
        gate.closed()
        with trio.fail_after(1):
            await admitted.wait()


async def test_a_slot_freed_at_one_endpoint_admits_another_waiting_on_the_budget() -> None:
    budget = ConnectionBudget(1)
    one, two = Gate(budget), Gate(budget)
    one.opened()
    admitted = trio.Event()

    async def accept_loop() -> None:
        await two.wait_for_room()
        admitted.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_loop)
        await trio.testing.wait_all_tasks_blocked()
        assert not admitted.is_set()
        one.closed()
        with trio.fail_after(1):
            await admitted.wait()
    assert budget.open == 0


async def test_raising_the_cap_admits_at_once() -> None:
    gate = Gate(ConnectionBudget(100), max_connections=1)
    gate.opened()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gate.wait_for_room)
        await trio.testing.wait_all_tasks_blocked()
        gate.set_max_connections(None)


def test_budget_cap_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ConnectionBudget(0)


async def test_body_pace_windows(mock_clock: MockClock) -> None:
    timeouts = EndpointTimeouts(body_min_rate=100.0, body_rate_window=2.0)
    assert poller_tick(timeouts) == 0.5
    poller = Poller(tick=0.5)
    poller.now = trio.current_time()
    pace = BodyPace(timeouts, poller)
    assert pace.timeout() == 2.0
    poller.now += 1.0
    pace.got(200)  # the window's share (200 bytes) in 1 s: a new window begins now
    assert pace.timeout() == 2.0
    poller.now += 1.5
    pace.got(50)  # under way: not late yet
    assert pace.timeout() == pytest.approx(0.5)
    poller.now += 0.5
    with pytest.raises(BodyTooSlow):
        pace.got(1)  # the window ended with 51 of 200 bytes
    with pytest.raises(BodyTooSlow):
        pace.timeout()


async def test_body_pace_is_bounded_by_client_idle(mock_clock: MockClock) -> None:
    timeouts = EndpointTimeouts(client_idle=1.0, body_min_rate=1.0, body_rate_window=30.0)
    poller = Poller(tick=0.25)
    pace = BodyPace(timeouts, poller)
    assert pace.timeout() == 1.0
