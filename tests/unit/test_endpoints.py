"""The daemon's endpoints: a fault in one endpoint's listener ends that endpoint only; a
change of anything but the address applies in place (tests/integration/test_endpoint_changes.py
has the same under load, and the moves)."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from config.spec import Endpoint as EndpointSpec
from daemon.reconcile.endpoints import EndpointManager
from proxy import endpoint as proxy_endpoint
from proxy.balancer import poller_tick
from proxy.endpoint import EndpointTimeouts
from tests.conftest import free_port


async def test_a_listener_that_fails_ends_its_endpoint_only(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_accept = proxy_endpoint.sockets.accept
    broken = {"a"}

    async def accept(listener: socket.socket) -> tuple[socket.socket, str]:
        port = listener.getsockname()[1]
        if port == ports["a"] and "a" in broken:
            broken.discard("a")
            raise RuntimeError("a bug in the accept loop")
        return await real_accept(listener)

    ports = {"a": free_port(), "b": free_port()}
    monkeypatch.setattr(proxy_endpoint.sockets, "accept", accept)
    manager = EndpointManager(drain_timeout=0.5)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        with trio.fail_after(10):
            b = await manager.ensure("b", EndpointSpec(port=ports["b"], bind="127.0.0.1"))
            lost = []
            spec = EndpointSpec(port=ports["a"], bind="127.0.0.1")
            await manager.ensure("a", spec, on_lost=lambda: lost.append("a"))
            await trio.testing.wait_all_tasks_blocked()  # a's accept loop has failed
            assert manager.get("a") is None and lost == ["a"]  # dropped; its worker is told
            assert manager.get("b") is b and b.address is not None  # b goes on
            again = await manager.ensure("a", EndpointSpec(port=ports["a"], bind="127.0.0.1"))
            assert again.address is not None  # the next round binds it again
        nursery.cancel_scope.cancel()
    assert any("endpoint a failed" in r.getMessage() for r in caplog.records)


async def test_a_change_of_what_is_not_the_listener_applies_without_a_rebind() -> None:
    manager = EndpointManager()
    port = free_port()
    spec = EndpointSpec(port=port, bind="127.0.0.1")
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        first = await manager.ensure("a", spec, drain_timeout=30.0)
        held = EndpointSpec(port=port, bind="127.0.0.1", cold_start_timeout=1200.0)
        assert await manager.ensure("a", held, drain_timeout=7200.0) is first  # same listener
        assert manager._slots["a"].drain_timeout == 7200.0
        moved = EndpointSpec(port=free_port(), bind="127.0.0.1")
        assert await manager.ensure("a", moved) is not first  # a new address: a new listener
        nursery.cancel_scope.cancel()


async def test_timeouts_change_in_place_and_the_poller_tick_follows() -> None:
    manager = EndpointManager()
    port = free_port()
    spec = EndpointSpec(port=port, bind="127.0.0.1")
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        first = await manager.ensure("a", spec)
        assert first.timeouts == EndpointTimeouts() and poller_tick(first.timeouts) == 0.5
        changed = EndpointSpec(
            port=port, bind="127.0.0.1", connect_timeout=1.0, read_timeout=0.2,
            client_idle_timeout=30.0,
        )  # fmt: skip
        assert await manager.ensure("a", changed) is first  # the same listener
        assert first.timeouts == EndpointTimeouts(connect=1.0, read_idle=0.2, client_idle=30.0)
        assert first._balancer.poller.tick == poller_tick(first.timeouts) == 0.05
        nursery.cancel_scope.cancel()


def test_the_poller_tick_is_a_quarter_of_the_shortest_timeout_within_bounds() -> None:
    assert poller_tick(EndpointTimeouts()) == 0.5  # the defaults: 5 s connect, 10 s header
    assert poller_tick(EndpointTimeouts(connect=0.4)) == 0.1
    assert poller_tick(EndpointTimeouts(client_idle=0.2)) == 0.05
    assert poller_tick(EndpointTimeouts(read_idle=0.001)) == 0.01


async def test_max_connections_and_trusted_proxies_reach_the_endpoint_in_place() -> None:
    manager = EndpointManager()
    port = free_port()
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        spec = EndpointSpec(
            port=port, bind="127.0.0.1", max_connections=5, trusted_proxies=("10.0.0.0/8",)
        )
        first = await manager.ensure("a", spec)
        assert first._gate.max_connections == 5
        assert first._balancer.is_trusted("10.1.2.3") and not first._balancer.is_trusted("::1")
        changed = EndpointSpec(port=port, bind="127.0.0.1", trusted_proxies=("::1/128",))
        assert await manager.ensure("a", changed) is first  # the same listener
        assert first._gate.max_connections is None  # back to berthd's budget
        assert first._balancer.is_trusted("::1") and not first._balancer.is_trusted("10.1.2.3")
        assert first._balancer.is_trusted("::ffff:10.1.2.3") is False
        nursery.cancel_scope.cancel()
