"""GPU passthrough by CDI against real Podman, with fake devices (no GPU here, see HOST.md).

A uniquely named CDI spec under /var/run/cdi (the directory Podman 4.3 reads) declares GPUs
"0" and "1": each maps a /dev/nvidiaN node to the host's /dev/null and sets an env variable.
Its kind is unique to the test too (`berth-test-<hex>.example/gpu`): two test runs on one
host would otherwise declare the same `nvidia.com/gpu` names, which CDI treats as a conflict
and refuses to resolve. berth's code takes the kind as a parameter for exactly this.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
import trio

from daemon.gpu.cdi import CdiInventory, scan_cdi
from daemon.gpu.placement import Assignment, GpuRequest, Placed, place
from daemon.runtime.interface import ContainerSpec
from daemon.runtime.podman import PodmanRuntime
from tests.integration.conftest import CDI_DIR

pytestmark = pytest.mark.podman


async def output_when_ready(runtime: PodmanRuntime, container_id: str) -> str:
    with trio.fail_after(15):
        while True:
            text = (await runtime.logs(container_id)).decode()
            if "end" in text.split():
                return text
            await trio.sleep(0.05)


async def test_two_one_gpu_replicas_get_their_own_device(
    runtime: PodmanRuntime,
    echo_image: str,
    test_labels: dict[str, str],
    free_port: Callable[[], int],
    fake_gpu_kind: str,
) -> None:
    scan = scan_cdi([str(CDI_DIR)], kind=fake_gpu_kind)
    gpus = CdiInventory(scan).gpus()
    assert [(g.index, g.cdi_name) for g in gpus] == [
        (0, f"{fake_gpu_kind}=0"),
        (1, f"{fake_gpu_kind}=1"),
    ]

    held: list[Assignment] = []
    outputs = []
    for n in range(2):
        where = place(GpuRequest(gpus=1), gpus, held)
        assert isinstance(where, Placed)
        held.append(Assignment(f"gpu-test/r{n}", where.devices))
        spec = ContainerSpec(
            name=f"berth-test-gpu-{uuid.uuid4().hex[:10]}",
            image=echo_image,
            labels=test_labels,
            app_port=8080,
            host_port=free_port(),
            command=("sh", "-c", "echo gpu=$BERTH_TEST_GPU; ls /dev | grep nvidia; echo end"),
            devices=where.devices,
            stop_timeout=1.0,
        )
        container_id = await runtime.create(spec)
        await runtime.start(container_id)
        outputs.append((await output_when_ready(runtime, container_id)).split())

    assert [a.devices for a in held] == [(f"{fake_gpu_kind}=0",), (f"{fake_gpu_kind}=1",)]
    assert outputs == [["gpu=0", "nvidia0", "end"], ["gpu=1", "nvidia1", "end"]]
    # A third replica finds no GPU free.
    refused = place(GpuRequest(gpus=1), gpus, held)
    assert not isinstance(refused, Placed)
    assert refused.reason == (
        "needs 1 GPU, 0 free (GPU 0 held by gpu-test/r0; GPU 1 held by gpu-test/r1)"
    )
