"""The metrics sampler against a real container: a CPU hog held to half a CPU."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
import trio

from daemon.metrics.model import ReplicaTarget
from daemon.metrics.sampler import MetricsSampler
from daemon.runtime.interface import ContainerSpec
from daemon.runtime.podman import PodmanRuntime

pytestmark = pytest.mark.podman

MiB = 2**20


async def test_a_cpu_hog_shows_cpu_and_memory(
    runtime: PodmanRuntime,
    echo_image: str,
    test_labels: dict[str, str],
    free_port: Callable[[], int],
) -> None:
    spec = ContainerSpec(
        name=f"berth-test-{uuid.uuid4().hex[:10]}",
        image=echo_image,
        labels=test_labels,
        app_port=8080,
        host_port=free_port(),
        command=("sh", "-c", "while :; do :; done"),
        cpus=0.5,
        memory_bytes=64 * MiB,
        stop_timeout=1.0,
    )
    cid = await runtime.create(spec)
    await runtime.start(cid)
    target = ReplicaTarget("hog", "r1", cid, cpus=0.5)
    sampler = MetricsSampler(
        runtime, lambda: [target], lambda name: None, interval=1.0, sample_timeout=3.0
    )
    async with trio.open_nursery() as nursery:
        await trio.sleep(1.0)  # let the hog run before the first sample
        await nursery.start(sampler.run)
        await trio.sleep(4.5)
        nursery.cancel_scope.cancel()

    latest = sampler.windows.latest("hog")
    assert latest is not None
    [replica] = latest.replicas
    assert replica.container_id == cid
    assert replica.cpu_percent is not None and 20.0 < replica.cpu_percent < 80.0, replica
    assert replica.memory_bytes is not None and replica.memory_bytes > 0
    assert replica.memory_limit_bytes == 64 * MiB
    load = sampler.deployment_load("hog", 60)
    assert load.replicas == 1 and load.samples >= 3
    assert load.cpu_percent is not None and load.cpu_percent > 40.0  # of its half CPU
    assert load.memory_percent is not None and 0.0 < load.memory_percent < 100.0
    assert load.requests_per_s is None  # no endpoint: not measured, not zero
    host = sampler.host_json()
    assert host["memory_total_bytes"] > 0 and host["cpu_percent"] is not None
