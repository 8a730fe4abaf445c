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
            await manager.ensure("a", EndpointSpec(port=ports["a"], bind="127.0.0.1"))
            await trio.testing.wait_all_tasks_blocked()  # a's accept loop has failed
            assert manager.get("a") is None  # dropped
            assert manager.get("b") is b and b.address is not None  # b goes on
            again = await manager.ensure("a", EndpointSpec(port=ports["a"], bind="127.0.0.1"))
            assert again.address is not None  # the next round binds it again
        nursery.cancel_scope.cancel()
    assert any("endpoint a failed" in r.getMessage() for r in caplog.records)
