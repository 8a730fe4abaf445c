"""The daemon's endpoints: a fault in one endpoint's listener ends that endpoint only."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from config.spec import Endpoint as EndpointSpec
from daemon.reconcile.endpoints import EndpointManager
from proxy import endpoint as proxy_endpoint
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
