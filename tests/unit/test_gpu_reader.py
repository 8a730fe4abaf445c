"""GPU samples through `GpuReader`: a wedged driver costs one thread, never a stream of them."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import trio

from daemon.gpu.fake import FakeGpuInventory, fake_gpus
from daemon.gpu.model import GpuSample
from daemon.gpu.reader import GpuReader


class WedgedInventory(FakeGpuInventory):
    """`sample` blocks (as NVML does on a wedged driver) until released."""

    def __init__(self) -> None:
        super().__init__(fake_gpus(1), samples=[GpuSample(0, "nvidia.com/gpu=0", 50.0)])
        self.release = threading.Event()
        self.calls = 0

    def sample(self) -> list[GpuSample]:
        self.calls += 1
        self.release.wait(30)
        return super().sample()


@pytest.fixture
def wedged() -> Iterator[WedgedInventory]:
    inventory = WedgedInventory()
    yield inventory
    inventory.release.set()


async def test_a_wedged_driver_holds_one_thread_and_reads_as_unknown(
    wedged: WedgedInventory, caplog: pytest.LogCaptureFixture
) -> None:
    reader = GpuReader(wedged, timeout=0.2)
    threads = threading.active_count()
    with trio.fail_after(5):
        assert await reader.sample() == []  # abandoned after 0.2 s
        for _ in range(50):  # every later sample answers at once, without a new thread
            assert await reader.sample() == []
    assert wedged.calls == 1 and reader.stuck
    assert threading.active_count() <= threads + 1
    wedged.release.set()
    with trio.fail_after(5):
        for _ in range(500):  # the abandoned thread ends on its own: look until it has
            if not reader.stuck:
                break
            await trio.sleep(0.01)
        samples = await reader.sample()
    assert [s.utilization_percent for s in samples] == [50.0]
    said = [r.getMessage() for r in caplog.records if "GPU samples" in r.getMessage()]
    assert said == [
        "GPU samples: NVML did not answer within 0.2s; GPU figures unknown until it does",
        "GPU samples: NVML answered again",
    ]


async def test_a_healthy_inventory_is_read_every_time() -> None:
    inventory = FakeGpuInventory(fake_gpus(2), samples=[GpuSample(0, "nvidia.com/gpu=0", 10.0)])
    reader = GpuReader(inventory)
    for _ in range(3):
        assert [s.index for s in await reader.sample()] == [0]
    assert not reader.stuck
