"""The GPUs that CDI spec files declare: names only, no metrics.

A CDI spec (https://github.com/cncf-tags/container-device-interface) is a JSON or YAML file
in /etc/cdi or /var/run/cdi with a `kind` ("nvidia.com/gpu") and named `devices`, each with
the container edits that give it (device nodes, env, mounts). `nvidia-ctk cdi generate`
writes one per host, naming each GPU by index ("0"), by UUID ("GPU-...") or both, plus "all".

Rules:
- A name declared again in a later directory replaces the earlier one (Podman's priority:
  /var/run/cdi over /etc/cdi).
- "all" is not a GPU, and MIG slices ("0:1") are not handed out whole: both are skipped.
- Names for the same GPU (the same /dev/nvidiaN node) count once; the index name is the one
  handed to containers.
- An unreadable or malformed file is skipped and reported, never fatal.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from daemon.gpu.model import CDI_KIND, DEFAULT_CDI_DIRS, GpuInfo, GpuSample

_SUFFIXES = (".json", ".yaml", ".yml")
_GPU_NODE = re.compile(r"/dev/nvidia(\d+)")
_CDI_ONLY = "GPU declared by CDI"


@dataclass(frozen=True)
class CdiDevice:
    kind: str
    name: str
    spec_file: str
    device_nodes: tuple[str, ...] = ()  # paths in the container

    @property
    def qualified_name(self) -> str:
        return f"{self.kind}={self.name}"

    @property
    def node_index(self) -> int | None:
        """N of the /dev/nvidiaN node this device gives, if it gives one."""
        for path in self.device_nodes:
            m = _GPU_NODE.fullmatch(path)
            if m:
                return int(m.group(1))
        return None


@dataclass(frozen=True)
class CdiScan:
    devices: tuple[CdiDevice, ...]  # of the kind asked for, in file order
    problems: tuple[str, ...] = ()  # files skipped, and why


def scan_cdi(dirs: Sequence[str] = DEFAULT_CDI_DIRS, *, kind: str = CDI_KIND) -> CdiScan:
    """Read every CDI spec in `dirs` (later directories win) and list `kind`'s devices."""
    by_name: dict[str, CdiDevice] = {}
    problems: list[str] = []
    for directory in dirs:
        try:
            files = sorted(p for p in Path(directory).iterdir() if p.suffix in _SUFFIXES)
        except OSError:
            continue  # no such directory: nothing declared there
        for path in files:
            try:
                devices = _read_spec(path, kind)
            except (OSError, ValueError, yaml.YAMLError) as exc:
                problems.append(f"skipped {path}: {_one_line(exc)}")
                continue
            for device in devices:
                by_name.pop(device.name, None)  # re-insert: the later file's position wins
                by_name[device.name] = device
    return CdiScan(devices=tuple(by_name.values()), problems=tuple(problems))


def cdi_gpus(scan: CdiScan) -> list[GpuInfo]:
    """One GpuInfo per GPU the scan declares, by index (see the module's rules)."""
    groups: dict[object, list[CdiDevice]] = {}
    for device in scan.devices:
        if device.name == "all" or ":" in device.name:
            continue
        node = device.node_index
        groups.setdefault(node if node is not None else device.name, []).append(device)
    numbered: list[tuple[int, CdiDevice, str | None]] = []
    unnumbered: list[tuple[CdiDevice, str | None]] = []
    for names in groups.values():
        chosen = next((d for d in names if d.name.isdigit()), names[0])
        uuid = next((d.name for d in names if d.name.startswith("GPU-")), None)
        index = chosen.node_index
        if index is None and chosen.name.isdigit():
            index = int(chosen.name)
        if index is None:
            unnumbered.append((chosen, uuid))
        else:
            numbered.append((index, chosen, uuid))
    numbered.sort(key=lambda entry: entry[0])
    after = max((i for i, _, _ in numbered), default=-1) + 1
    numbered += [(after + n, chosen, uuid) for n, (chosen, uuid) in enumerate(unnumbered)]
    return [GpuInfo(i, _CDI_ONLY, d.qualified_name, uuid) for i, d, uuid in numbered]


class CdiInventory:
    """GPUs known only from CDI files: usable by containers, with no metrics."""

    def __init__(self, scan: CdiScan, *, nvml_reason: str | None = None) -> None:
        self._scan = scan
        self._gpus = cdi_gpus(scan)
        self.nvml_reason = nvml_reason

    def __repr__(self) -> str:
        return f"CdiInventory({[g.cdi_name for g in self._gpus]})"

    def gpus(self) -> list[GpuInfo]:
        return list(self._gpus)

    def sample(self) -> list[GpuSample]:
        return []

    def describe(self) -> str:
        n = len(self._gpus)
        text = f"{n} GPU{'s' if n != 1 else ''} declared by CDI (no metrics)"
        if self.nvml_reason:
            text += f"; {self.nvml_reason}"
        if self._scan.problems:
            text += f"; {'; '.join(self._scan.problems)}"
        return text

    def close(self) -> None:
        pass


def _read_spec(path: Path, kind: str) -> list[CdiDevice]:
    text = path.read_text()
    data: Any = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError("not a CDI spec (expected a mapping)")
    if data.get("kind") != kind:
        return []
    devices = data.get("devices")
    if not isinstance(devices, list):
        raise ValueError("`devices` must be a list")
    out: list[CdiDevice] = []
    for entry in devices:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name:
            raise ValueError("every device needs a `name`")
        edits = entry.get("containerEdits") or {}
        nodes = (edits.get("deviceNodes") or []) if isinstance(edits, dict) else []
        paths = tuple(n["path"] for n in nodes if isinstance(n, dict) and "path" in n)
        out.append(CdiDevice(kind=kind, name=name, spec_file=str(path), device_nodes=paths))
    return out


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
