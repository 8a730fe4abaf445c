"""Holdings are derived: GPUs and host ports held are what the containers say, after any
sequence of creates, removals, deaths and containers vanishing behind berthd's back.

A small model of the host (containers with their devices and ports, per deployment) is
driven by random operations; the GPU ledger and the port allocator are told only what the
worker tells them (place/allocate, settle, release, claim, and observations). Invariants:
never a whole GPU held twice, never a port handed out twice, and once every deployment has
been observed, exactly what the existing containers hold is held: nothing leaks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.gpu.fake import FakeGpuInventory, fake_gpus
from daemon.gpu.ledger import GpuLedger, replica_key
from daemon.gpu.placement import Assignment, GpuRequest, Placed
from daemon.reconcile.ports import HostPortAllocator

DEPLOYMENTS = ("a", "b", "c")


@dataclass
class Container:
    devices: tuple[str, ...]
    ports: set[int]
    running: bool = True


@dataclass
class Host:
    gpus: GpuLedger = field(default_factory=lambda: GpuLedger(FakeGpuInventory(fake_gpus(3))))
    ports: HostPortAllocator = field(default_factory=HostPortAllocator)
    containers: dict[str, Container] = field(default_factory=dict)  # key -> container
    serial: int = 0

    def observe(self, deployment: str) -> None:
        gpu_stamp, port_stamp = self.gpus.observing(), self.ports.observing()
        mine = {k: c for k, c in self.containers.items() if k.startswith(f"{deployment}/")}
        held = [Assignment(k, c.devices) for k, c in mine.items() if c.running and c.devices]
        self.gpus.observed(deployment, held, stamp=gpu_stamp)
        self.ports.observed(
            deployment, {p for c in mine.values() for p in c.ports}, stamp=port_stamp
        )

    def create(self, deployment: str, gpus: int, fails: bool) -> None:
        self.serial += 1
        key = replica_key(deployment, f"r{self.serial}")
        placed = self.gpus.place(key, GpuRequest(gpus=gpus))
        if not isinstance(placed, Placed):
            return
        ports = {self.ports.allocate(key), self.ports.allocate(key)}
        if fails:
            self.gpus.release(key)
            self.ports.release(key)
            return
        self.containers[key] = Container(placed.devices, ports)
        self.gpus.settle(key)
        self.ports.settle(key)

    def start_again(self, key: str) -> None:
        container = self.containers[key]
        if container.running:
            return
        if self.gpus.claim(key, container.devices, None) is None:
            container.running = True
        else:  # its GPU went elsewhere: replaced (removed; the plan creates another)
            self.remove(key)

    def remove(self, key: str) -> None:
        container = self.containers.pop(key)
        self.gpus.release(key)
        self.ports.release(key, container.ports)

    def check(self) -> None:
        held = [d for a in self.gpus.holdings().values() for d in a.devices]
        assert len(held) == len(set(held)), self.gpus.holdings()
        ports = [p for c in self.containers.values() for p in c.ports]
        assert len(ports) == len(set(ports))

    def check_settled(self) -> None:
        """After every deployment was observed: held is exactly what containers hold."""
        want = {k: c.devices for k, c in self.containers.items() if c.running and c.devices}
        assert {k: a.devices for k, a in self.gpus.holdings().items()} == want
        assert self.ports.held() == {p for c in self.containers.values() for p in c.ports}


OPERATION = st.one_of(
    st.tuples(st.just("create"), st.sampled_from(DEPLOYMENTS), st.integers(0, 2), st.booleans()),
    st.tuples(st.just("observe"), st.sampled_from(DEPLOYMENTS)),
    st.tuples(st.just("die"), st.integers(0, 50)),
    st.tuples(st.just("vanish"), st.integers(0, 50)),
    st.tuples(st.just("remove"), st.integers(0, 50)),
    st.tuples(st.just("start"), st.integers(0, 50)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(OPERATION, max_size=40))
def test_holdings_follow_the_containers(operations: list[tuple[object, ...]]) -> None:
    host = Host()
    for op in operations:
        keys = sorted(host.containers)
        match op:
            case ("create", str(deployment), int(gpus), bool(fails)):
                host.create(deployment, gpus, fails)
            case ("observe", str(deployment)):
                host.observe(deployment)
            case ("die", int(i)) if keys:
                host.containers[keys[i % len(keys)]].running = False
            case ("vanish", int(i)) if keys:  # podman rm -f: berthd is not told
                del host.containers[keys[i % len(keys)]]
            case ("remove", int(i)) if keys:
                host.remove(keys[i % len(keys)])
            case ("start", int(i)) if keys:
                host.start_again(keys[i % len(keys)])
        host.check()
    for deployment in DEPLOYMENTS:
        host.observe(deployment)
    host.check_settled()


def test_a_placement_outlives_an_observation_that_began_before_its_create_ended() -> None:
    ledger = GpuLedger(FakeGpuInventory(fake_gpus(1)))
    stamp = ledger.observing()  # a list begins ...
    assert isinstance(ledger.place("a/r1", GpuRequest(gpus=1)), Placed)
    ledger.settle("a/r1")  # ... the create ends while it runs, so the list may miss it
    ledger.observed("a", [], stamp=stamp)
    assert "a/r1" in ledger.holdings()
    assert not isinstance(ledger.place("a/r2", GpuRequest(gpus=1)), Placed)
    ledger.observed("a", [], stamp=ledger.observing())  # a later list: it is really gone
    assert ledger.holdings() == {}
