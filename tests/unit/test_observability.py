"""What berthd hands the metrics sampler: which replicas, and which of them every round."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from config.parse import parse_spec
from config.spec import DeploymentSpec
from daemon.api.control_plane import ControlPlane
from daemon.observability import replica_targets
from daemon.reconcile.replicas import ReplicaView

FIXED = """
name = "fixed"
image = "img"
port = 8080
[replicas]
count = 2
[endpoint]
port = 18080
"""
SCALED_ON = """
name = "{name}"
image = "img"
port = 8080
[replicas]
min = 1
max = 3
[[autoscale.metrics]]
metric = "{metric}"
target = 50
[resources]
memory = "64Mi"
[endpoint]
port = 18081
"""


@dataclass
class Snapshot:
    replicas: tuple[ReplicaView, ...]


@dataclass
class StubWorker:
    spec: DeploymentSpec
    states: tuple[str, ...] = ("ready",)
    snap: Snapshot = field(init=False)

    def __post_init__(self) -> None:
        views = tuple(
            ReplicaView(f"r{i}", f"c-{self.spec.name}-{i}", s, s == "ready", 0, None, "x")
            for i, s in enumerate(self.states)
        )
        self.snap = Snapshot(views)

    def active_spec(self) -> DeploymentSpec:
        return self.spec

    def snapshot(self) -> Snapshot:
        return self.snap


@dataclass
class StubDaemon:
    workers: dict[str, Any]


def test_only_replicas_an_autoscaler_reads_cpu_or_memory_of_are_fast() -> None:
    workers = {
        "fixed": StubWorker(parse_spec(FIXED), ("ready", "stopped")),
        "on-cpu": StubWorker(parse_spec(SCALED_ON.format(name="on-cpu", metric="cpu"))),
        "on-memory": StubWorker(parse_spec(SCALED_ON.format(name="on-memory", metric="memory"))),
        "on-load": StubWorker(parse_spec(SCALED_ON.format(name="on-load", metric="concurrency"))),
    }
    targets = replica_targets(cast(ControlPlane, StubDaemon(workers)))
    assert {(t.deployment, t.replica_id, t.fast_stats) for t in targets} == {
        ("fixed", "r0", False),  # r1 is stopped: nothing to measure
        ("on-cpu", "r0", True),
        ("on-memory", "r0", True),
        ("on-load", "r0", False),  # the proxy's figures, not container stats
    }
