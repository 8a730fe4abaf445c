"""End to end, GPUs by CDI with fake devices (HOST.md): berthd as a process, real Podman.

A CDI spec under /var/run/cdi declares `nvidia.com/gpu` devices "0" and "1" (each maps
/dev/nvidiaN to the host's /dev/null and sets an env variable). berthd finds them at start
(no NVML here): `berth status` lists them, two 1-GPU replicas get distinct devices, a third
stays pending with the reason, and a spec asking 3 GPUs per replica is refused at apply.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import podman_binary
from tests.e2e.berthd_process import Berthd, wait_until
from tests.e2e.fake_gpus import fake_nvidia_gpus

pytestmark = pytest.mark.podman

SPEC = """
name = "gpu"
image = "{image}"
port = 8080
stop_timeout = "1s"
[resources]
gpus = {gpus}
[replicas]
count = 3
[endpoint]
port = {port}
bind = "127.0.0.1"
"""


@pytest.fixture
def fake_gpus() -> Iterator[Path]:
    with fake_nvidia_gpus(2, "gpus") as path:
        yield path


@pytest.fixture
def berthd(berthd_factory: Callable[..., Berthd], fake_gpus: Path) -> Berthd:
    return berthd_factory()  # started after the CDI file exists: berthd reads it at start


def test_gpu_replicas_get_distinct_devices_and_the_third_waits(
    berthd: Berthd, tmp_path: Path, echo_image: str, free_port: Callable[[], int]
) -> None:
    berthd.start()
    status = berthd.json("status")
    assert [g["cdi_name"] for g in status["gpus"]] == ["nvidia.com/gpu=0", "nvidia.com/gpu=1"]

    spec = tmp_path / "gpu.toml"
    spec.write_text(SPEC.format(image=echo_image, gpus=3, port=free_port()))
    refused = berthd.berth("apply", str(spec), check=False)
    assert refused.returncode != 0 and "resources.gpus" in refused.stderr

    spec.write_text(SPEC.format(image=echo_image, gpus=1, port=free_port()))
    berthd.berth("apply", str(spec))
    wait_until(
        "two ready GPU replicas and one pending",
        lambda: (got := berthd.json("get", "gpu"))["ready"] == 2 and got["pending"] == 1,
        timeout=30,
    )
    got = berthd.json("get", "gpu")
    assert sorted(tuple(r["gpus"]) for r in got["replicas"]) == [
        ("nvidia.com/gpu=0",),
        ("nvidia.com/gpu=1",),
    ]
    assert "needs 1 GPU" in got["error"]
    for replica in got["replicas"]:
        seen = subprocess.run(
            [
                podman_binary(),
                "exec",
                replica["container_id"],
                "sh",
                "-c",
                "ls /dev/nvidia*; tr '\\0' '\\n' < /proc/1/environ | grep BERTH_FAKE_GPU",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        (device,) = replica["gpus"]
        n = device.rsplit("=", 1)[1]
        assert seen == [f"/dev/nvidia{n}", f"BERTH_FAKE_GPU={n}"]
    assert "pending" in berthd.berth("events", "gpu").stdout
    assert (
        "1 pending" in berthd.berth("get", "gpu").stdout
        or "pending:" in berthd.berth("get", "gpu").stdout
    )


def test_apply_warns_when_an_explicit_surge_can_never_fit(
    berthd: Berthd, tmp_path: Path, echo_image: str, free_port: Callable[[], int]
) -> None:
    berthd.start()
    spec = tmp_path / "full.toml"
    text = SPEC.format(image=echo_image, gpus=1, port=free_port()).replace("count = 3", "count = 2")
    for dry_run in (("--dry-run",), ()):
        spec.write_text(text + '[update]\nstrategy = "surge"\n')
        surge = berthd.berth("apply", *dry_run, str(spec))
        assert 'berth: warning: update.strategy: "surge" starts 1 new replica' in surge.stderr
        assert "this host has 2 GPUs" in surge.stderr
    spec.write_text(text)  # unset: surge while there is room, else replace in place
    assert "warning" not in berthd.berth("apply", str(spec)).stderr
