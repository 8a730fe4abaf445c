"""CDI spec files -> the GPUs they declare (no Podman here: tests/integration has that)."""

from __future__ import annotations

import json
from pathlib import Path

from daemon.gpu.cdi import CdiInventory, cdi_gpus, scan_cdi
from daemon.gpu.model import GpuInfo

YAML_SPEC = """\
cdiVersion: 0.5.0
kind: nvidia.com/gpu
devices:
- name: "0"
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
- name: GPU-aaaa
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
- name: "1"
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia1
- name: "1:0"
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia1
    - path: /dev/nvidia-caps/nvidia-cap12
- name: all
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
    - path: /dev/nvidia1
containerEdits:
  env:
  - NVIDIA_VISIBLE_DEVICES=void
"""


def write(directory: Path, name: str, text: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(text)


def names(gpus: list[GpuInfo]) -> list[tuple[int, str, str | None]]:
    return [(g.index, g.cdi_name, g.uuid) for g in gpus]


def test_nvidia_ctk_yaml_one_entry_per_gpu(tmp_path: Path) -> None:
    write(tmp_path / "etc", "nvidia.yaml", YAML_SPEC)
    scan = scan_cdi([str(tmp_path / "etc")])
    assert [d.name for d in scan.devices] == ["0", "GPU-aaaa", "1", "1:0", "all"]
    assert scan.problems == ()
    # "all" is no GPU, the MIG slice is skipped, index and UUID names of GPU 0 count once.
    assert names(cdi_gpus(scan)) == [
        (0, "nvidia.com/gpu=0", "GPU-aaaa"),
        (1, "nvidia.com/gpu=1", None),
    ]


def test_json_spec_and_other_kinds(tmp_path: Path) -> None:
    spec = {
        "cdiVersion": "0.5.0",
        "kind": "nvidia.com/gpu",
        "devices": [{"name": "GPU-bbbb", "containerEdits": {}}, {"name": "GPU-cccc"}],
    }
    write(tmp_path, "a.json", json.dumps(spec))
    write(tmp_path, "other.yaml", "cdiVersion: 0.5.0\nkind: vendor.com/fpga\ndevices: []\n")
    write(tmp_path, "notes.txt", "not a spec")
    scan = scan_cdi([str(tmp_path)])
    # Named by UUID only, no device node: numbered in file order.
    assert names(cdi_gpus(scan)) == [
        (0, "nvidia.com/gpu=GPU-bbbb", "GPU-bbbb"),
        (1, "nvidia.com/gpu=GPU-cccc", "GPU-cccc"),
    ]


def test_later_directory_wins_and_names_merge(tmp_path: Path) -> None:
    spec = (
        "kind: nvidia.com/gpu\ndevices:\n"
        "- name: '0'\n  containerEdits: {deviceNodes: [{path: %s}]}\n"
    )
    one, moved = spec % "/dev/nvidia0", spec % "/dev/nvidia3"
    write(tmp_path / "etc", "x.yaml", one)
    write(tmp_path / "run", "y.yaml", moved)
    scan = scan_cdi([str(tmp_path / "etc"), str(tmp_path / "run")])
    assert [(d.name, d.spec_file.endswith("y.yaml")) for d in scan.devices] == [("0", True)]
    assert names(cdi_gpus(scan)) == [(3, "nvidia.com/gpu=0", None)]


def test_bad_files_are_skipped_and_reported(tmp_path: Path) -> None:
    write(tmp_path, "broken.yaml", "kind: [unclosed\n")
    write(tmp_path, "list.json", "[1, 2]")
    write(tmp_path, "noname.yaml", "kind: nvidia.com/gpu\ndevices:\n- containerEdits: {}\n")
    write(tmp_path, "good.yaml", "kind: nvidia.com/gpu\ndevices:\n- name: '0'\n")
    scan = scan_cdi([str(tmp_path), str(tmp_path / "missing")])
    assert [d.name for d in scan.devices] == ["0"]
    assert len(scan.problems) == 3
    assert all(p.startswith(f"skipped {tmp_path}/") for p in scan.problems)
    assert any("every device needs a `name`" in p for p in scan.problems)
    inventory = CdiInventory(scan, nvml_reason="NVML did not load (no driver)")
    assert inventory.describe().startswith(
        "1 GPU declared by CDI (no metrics); NVML did not load (no driver); skipped "
    )
    assert inventory.sample() == []


def test_custom_kind(tmp_path: Path) -> None:
    write(tmp_path, "t.yaml", "kind: test.example/gpu\ndevices:\n- name: '0'\n- name: '1'\n")
    assert scan_cdi([str(tmp_path)]).devices == ()
    scan = scan_cdi([str(tmp_path)], kind="test.example/gpu")
    assert [g.cdi_name for g in cdi_gpus(scan)] == ["test.example/gpu=0", "test.example/gpu=1"]
    assert CdiInventory(scan).describe() == "2 GPUs declared by CDI (no metrics)"
