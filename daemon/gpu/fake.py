"""An in-memory `GpuInventory` for unit tests: set the GPUs and the samples you want."""

from __future__ import annotations

from collections.abc import Sequence

from daemon.gpu.model import CDI_KIND, GpuInfo, GpuSample

GiB = 1024**3


def fake_gpus(
    count: int, *, memory: int | None = 24 * GiB, name: str = "Fake GPU"
) -> list[GpuInfo]:
    """`count` GPUs named nvidia.com/gpu=0.., each with `memory` bytes (None: unknown)."""
    return [
        GpuInfo(
            index=i,
            name=name,
            cdi_name=f"{CDI_KIND}={i}",
            uuid=f"GPU-fake-{i:04d}",
            memory_total_bytes=memory,
        )
        for i in range(count)
    ]


class FakeGpuInventory:
    def __init__(
        self,
        gpus: Sequence[GpuInfo] = (),
        *,
        samples: Sequence[GpuSample] = (),
        description: str | None = None,
    ) -> None:
        self.gpu_list = list(gpus)
        self.samples = list(samples)  # what the next sample() returns; tests replace it
        self.description = description
        self.sample_calls = 0
        self.closed = False

    def __repr__(self) -> str:
        return f"FakeGpuInventory({[g.cdi_name for g in self.gpu_list]})"

    def gpus(self) -> list[GpuInfo]:
        return list(self.gpu_list)

    def sample(self) -> list[GpuSample]:
        self.sample_calls += 1
        return list(self.samples)

    def describe(self) -> str:
        if self.description is not None:
            return self.description
        if not self.gpu_list:
            return "no GPU found: fake inventory with none"
        n = len(self.gpu_list)
        return f"{n} fake GPU{'s' if n != 1 else ''}"

    def close(self) -> None:
        self.closed = True
