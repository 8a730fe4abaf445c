"""Scale to zero and back, round by round: two workers on one fake GPU (FakeRuntime, a real
store, real endpoints, trio's MockClock).

The endpoints' live figures (requests queued, in flight, the last one's end) are set on
their balancers directly: what a held request does to them is the proxy's, tested there and
end to end (tests/e2e/test_berthd_swap.py); here it is what the workers make of them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from config.canonical import spec_id
from config.parse import parse_spec
from daemon.cli.format import deployment_status
from daemon.metrics.model import DeploymentLoad
from daemon.reconcile.context import WorkerContext
from daemon.reconcile.endpoints import EndpointManager
from daemon.reconcile.worker import DeploymentWorker
from daemon.runtime.fake import FakeRuntime
from daemon.runtime.interface import LABEL_DEPLOYMENT
from daemon.store.database import Store
from proxy.endpoint import Endpoint
from proxy.queue import Waiter
from tests.conftest import free_port
from tests.unit.test_worker import fake_parts

IMAGE = "localhost/berth-echo:1"


def spec_text(name: str, port: int, extra_replicas: str = "", gateway: str = "") -> str:
    return (
        f'name = "{name}"\nimage = "{IMAGE}"\nport = 8080\nstop_timeout = "1s"\n'
        f"[resources]\ngpus = 1\n[replicas]\nmin = 0\nmax = 1\n{extra_replicas}"
        f'[autoscale]\nscale_down_delay = "1h"\n'
        f'[endpoint]\nport = {port}\nbind = "127.0.0.1"\n'
        f'[gateway]\nmodels = ["{name}-model"]\n{gateway}'
    )


def idle_load(name: str, window: float) -> DeploymentLoad:
    return DeploymentLoad(window, samples=3, replicas=1, requests_per_s=0.0)


@dataclass
class Rig:
    runtime: FakeRuntime
    store: Store
    endpoints: EndpointManager
    ctx: WorkerContext
    workers: dict[str, DeploymentWorker]
    answering: set[int]

    def apply(self, text: str) -> None:
        spec = parse_spec(text)
        self.store.apply(spec.name, spec_id(spec), text, "{}")
        self.workers.setdefault(spec.name, DeploymentWorker(spec.name, self.ctx))

    def endpoint(self, name: str) -> Endpoint:
        endpoint = self.endpoints.get(name)
        assert endpoint is not None
        return endpoint

    def hold(self, name: str, n: int = 1) -> None:
        """`n` requests held at the endpoint (queued and counted in flight)."""
        b = self.endpoint(name)._balancer
        for _ in range(n):
            b.slots.waiters.append(Waiter([]))
        b.totals.in_flight += n

    def release(self, name: str) -> None:
        """Every held request is over: served (granted a replica), or its client hung up."""
        b = self.endpoint(name)._balancer
        b.totals.in_flight = 0
        b.slots.waiters.clear()

    async def cold_start(self, name: str) -> None:
        """A request for `name` held at its endpoint starts a replica; once that is ready,
        the request is served (the deployment is loaded and idle from then on)."""
        self.hold(name)
        await self.rounds(name)
        await self.ready(name)
        self.release(name)

    def containers(self, name: str) -> list[str]:
        return [
            c.spec.labels[LABEL_DEPLOYMENT]
            for c in self.runtime.containers.values()
            if c.spec.labels[LABEL_DEPLOYMENT] == name
        ]

    def events(self, kind: str, name: str | None = None) -> list[str]:
        return [
            e.message
            for e in self.store.events()
            if e.kind == kind and (name is None or e.deployment == name)
        ]

    async def rounds(self, *names: str, n: int = 1) -> None:
        for _ in range(n):
            for name in names:
                await self.workers[name].reconcile_once()

    async def ready(self, name: str) -> None:
        """Rounds until `name` has a ready replica (its probes pass)."""
        for _ in range(4):
            self.answering.update(c.spec.host_port for c in self.runtime.containers.values())
            await self.workers[name].reconcile_once()
            await self.workers[name].probe_once()
        await self.workers[name].reconcile_once()
        assert self.workers[name].snapshot().ready == 1


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    p = fake_parts(tmp_path, gpus=1, load=idle_load)
    async with trio.open_nursery() as nursery:
        await nursery.start(p.endpoints.run)
        yield Rig(p.runtime, p.store, p.endpoints, p.ctx, {}, p.answering)
        nursery.cancel_scope.cancel()
    p.store.close()


async def test_a_held_request_cold_starts_an_idle_deployment(
    rig: Rig, mock_clock: MockClock
) -> None:
    rig.apply(spec_text("a", free_port()))
    await rig.rounds("a")
    assert rig.workers["a"].snapshot().status == "idle" and rig.containers("a") == []
    rig.hold("a", 2)
    await rig.rounds("a")
    assert rig.events("cold-start", "a") == ["woken by 2 waiting requests: 0 -> 1"]
    assert rig.containers("a") == ["a"]


async def test_a_cold_start_whose_waiters_all_left_is_cancelled_and_its_replica_removed(
    rig: Rig, mock_clock: MockClock
) -> None:
    rig.apply(spec_text("a", free_port()))
    await rig.rounds("a")
    rig.hold("a")
    await rig.rounds("a")
    mock_clock.jump(2)
    await rig.rounds("a")  # one waiter still there: goes on
    assert rig.events("start-cancelled") == [] and rig.containers("a") == ["a"]
    rig.release("a")
    mock_clock.jump(1.5)
    await rig.rounds("a", n=2)
    (message,) = rig.events("start-cancelled", "a")
    assert message.startswith("every waiting request left 3.5s into the cold start")
    assert rig.containers("a") == []
    snap = rig.workers["a"].snapshot()
    assert snap.desired == 0 and snap.status == "idle" and snap.unloaded_at is not None


async def test_a_ready_cold_start_is_not_cancelled_and_a_pinned_start_never_is(
    rig: Rig, mock_clock: MockClock
) -> None:
    rig.apply(spec_text("a", free_port()))
    await rig.rounds("a")
    await rig.cold_start("a")
    await rig.rounds("a", n=2)
    assert rig.events("start-cancelled") == [] and rig.containers("a") == ["a"]
    rig.apply(spec_text("b", free_port()))
    rig.store.set_pinned_replicas("b", 1)  # `berth scale b 1`: not the waiters' start
    await rig.rounds("b")
    rig.hold("b")
    await rig.rounds("b")
    rig.release("b")  # its only client hung up before the replica was ready
    await rig.rounds("b", n=2)
    assert rig.events("cold-start", "b") == [] and rig.events("start-cancelled", "b") == []
    assert rig.workers["b"].snapshot().desired == 1  # still wanted (pending: a has the GPU)


async def test_an_idle_deployment_is_swapped_out_for_a_woken_one(
    rig: Rig, mock_clock: MockClock
) -> None:
    rig.apply(spec_text("a", free_port()))
    rig.apply(spec_text("b", free_port()))
    await rig.rounds("a", "b")
    await rig.cold_start("a")  # served: idle from now
    rig.endpoint("a")._balancer.last_request.at = trio.current_time()
    mock_clock.jump(5)
    rig.hold("b")
    await rig.rounds("b", n=2)  # cold start; the create finds the GPU held: pending, swap
    assert rig.events("pending", "b") and rig.events("cold-start", "b")
    (swap,) = rig.events("swap", "b")
    assert swap.startswith("swapping out a for b: its new replica is pending: needs 1 GPU")
    assert "victim a (idle 5s, min_idle 0s, priority 0 <= 0)" in swap
    await rig.rounds("a", n=2)  # the victim scales to zero and removes its replica
    assert rig.events("scaled", "a")[-1] == "swapped out for b: 1 -> 0"
    assert rig.containers("a") == []
    await rig.rounds("b")  # its GPU is free: created at once, no back-off wait
    assert rig.containers("b") == ["b"]
    assert rig.ctx.swaps.last_swap is not None and rig.ctx.swaps.last_swap.victims == ("a",)


async def test_a_deployment_with_a_request_in_flight_is_never_swapped_out(
    rig: Rig, mock_clock: MockClock
) -> None:
    rig.apply(spec_text("a", free_port()))
    rig.apply(spec_text("b", free_port(), gateway="priority = 5\n"))
    await rig.rounds("a", "b")
    await rig.cold_start("a")
    rig.endpoint("a")._balancer.totals.in_flight = 1  # a long request at a
    rig.hold("b")
    for _ in range(6):
        mock_clock.jump(1)
        await rig.rounds("b", "a")
    assert rig.events("swap") == [] and rig.containers("a") == ["a"]
    error = rig.workers["b"].snapshot().error or ""
    assert "nothing to swap out: a has 1 request in flight" in error
    # A held request that waits out cold_start_timeout is told why in its 503.
    refusal = rig.endpoint("b")._balancer._cold_refusal()
    assert refusal.status == 503 and refusal.message.startswith(
        "no replica became ready in time: a new replica is pending: needs 1 GPU"
    )
    assert refusal.message.endswith("; nothing to swap out: a has 1 request in flight")
    rig.endpoint("a")._balancer.totals.in_flight = 0  # its stream ended: idle
    rig.endpoint("a")._balancer.last_request.at = trio.current_time()
    mock_clock.jump(0.5)
    await rig.rounds("b", "a", "a", "b")
    assert len(rig.events("swap", "b")) == 1 and rig.containers("b") == ["b"]
    assert rig.endpoint("b")._balancer.hold_note is None


async def test_min_idle_and_priority_keep_a_deployment(rig: Rig, mock_clock: MockClock) -> None:
    rig.apply(spec_text("a", free_port(), gateway='min_idle = "1m"\n'))
    rig.apply(spec_text("b", free_port()))
    await rig.rounds("a", "b")
    await rig.cold_start("a")
    rig.endpoint("a")._balancer.last_request.at = trio.current_time()
    rig.hold("b")
    mock_clock.jump(30)
    await rig.rounds("b", n=2)
    assert rig.events("swap") == []
    assert "a has been idle 30s < min_idle 1m" in (rig.workers["b"].snapshot().error or "")
    mock_clock.jump(31)
    await rig.rounds("b")
    assert len(rig.events("swap", "b")) == 1


async def test_scale_to_zero_after_unloads_from_the_last_request(
    rig: Rig, mock_clock: MockClock
) -> None:
    rig.apply(spec_text("a", free_port(), extra_replicas='scale_to_zero_after = "10m"\n'))
    await rig.rounds("a")
    await rig.cold_start("a")
    rig.endpoint("a")._balancer.totals.in_flight = 1  # served for 5 minutes
    mock_clock.jump(300)
    await rig.rounds("a")
    rig.endpoint("a")._balancer.totals.in_flight = 0
    rig.endpoint("a")._balancer.last_request.at = trio.current_time()
    mock_clock.jump(599)
    await rig.rounds("a")
    assert rig.events("unloaded") == [] and rig.containers("a") == ["a"]
    mock_clock.jump(2)
    await rig.rounds("a", n=2)
    assert rig.events("unloaded", "a") == ["no request for 10m1s (scale_to_zero_after 10m): 1 -> 0"]
    assert rig.containers("a") == []
    snap = rig.workers["a"].snapshot()
    assert snap.status == "idle" and snap.unloaded_at is not None


def test_berth_ls_shows_when_an_idle_deployment_was_unloaded() -> None:
    now = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
    idle = {"status": "idle", "unloaded_at": "2026-12-01T11:55:30.250Z"}
    assert deployment_status(idle, now) == "idle (unloaded 4m ago)"
    assert deployment_status({**idle, "unloaded_at": "2026-12-01T11:59:48Z"}, now) == (
        "idle (unloaded 12s ago)"
    )
    assert deployment_status({**idle, "unloaded_at": "2026-11-29T11:00:00Z"}, now) == (
        "idle (unloaded 2d ago)"
    )
    assert deployment_status({"status": "idle", "unloaded_at": None}, now) == "idle"
    assert deployment_status({"status": "running", "unloaded_at": idle["unloaded_at"]}) == (
        "running"
    )
    assert deployment_status({}) == "-"


async def test_a_cold_start_cancelled_during_its_swap_leaves_the_victim_loaded(
    rig: Rig, mock_clock: MockClock
) -> None:
    rig.apply(spec_text("a", free_port()))
    rig.apply(spec_text("b", free_port()))
    await rig.rounds("a", "b")
    await rig.cold_start("a")
    rig.hold("b")
    await rig.rounds("b", n=2)
    assert len(rig.events("swap", "b")) == 1
    assert "; swapping out a" in (rig.workers["b"].snapshot().error or "")
    rig.release("b")  # b's only client hung up before a went
    await rig.rounds("b", "a", "a")
    assert len(rig.events("start-cancelled", "b")) == 1
    assert rig.containers("a") == ["a"] and rig.workers["a"].snapshot().desired == 1
    assert "swapped out for b: 1 -> 0" not in rig.events("scaled", "a")


async def test_a_restarted_berthd_keeps_a_loaded_min_zero_deployment(
    rig: Rig, mock_clock: MockClock
) -> None:
    rig.apply(spec_text("a", free_port()))
    await rig.rounds("a")
    await rig.cold_start("a")
    fresh = DeploymentWorker("a", rig.ctx)  # as a restarted berthd's first worker
    await fresh.reconcile_once()
    await fresh.reconcile_once()
    assert fresh.snapshot().desired == 1 and rig.containers("a") == ["a"]
    assert rig.events("removed") == []


async def test_room_that_comes_by_other_means_is_used_at_once(
    rig: Rig, mock_clock: MockClock
) -> None:
    rig.apply(spec_text("a", free_port()))
    rig.apply(spec_text("b", free_port()))
    await rig.rounds("a", "b")
    rig.store.set_pinned_replicas("a", 1)  # a pinned: no candidate for a swap
    await rig.ready("a")
    rig.hold("b")
    for _ in range(5):  # b's create back-off grows meanwhile: 1.5 s, 3 s, 6 s, ...
        mock_clock.jump(12)
        await rig.rounds("b")
    assert rig.containers("b") == [] and rig.events("swap") == []
    assert "a has its count pinned" in (rig.workers["b"].snapshot().error or "")
    rig.store.set_pinned_replicas("a", 0)  # berth scale a 0: its GPU frees
    await rig.rounds("a", "a")
    assert rig.containers("a") == []
    mock_clock.jump(0.5)
    await rig.rounds("b", "b")  # not at the end of the back-off: now
    assert rig.containers("b") == ["b"] and rig.events("swap") == []
