"""The GPUs NVML sees, with live samples: the only module that imports pynvml.

Every call here blocks (it talks to the driver); the daemon makes the inventory and calls
`sample()` through `trio.to_thread.run_sync`. NVML's own exceptions never leave this module:
a failed `open` is `NvmlUnavailable` with the reason, and a metric a GPU does not report
(power on some boards, temperature in some VMs) is None in its sample.

Each GPU's CDI name comes from the CDI specs when one declares it (by index or by UUID, as
`nvidia-ctk cdi generate` names them); otherwise it is `nvidia.com/gpu=<index>`, and
`describe()` says that containers cannot get it until a CDI spec is generated.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from daemon.gpu.cdi import CdiScan
from daemon.gpu.model import CDI_KIND, GpuInfo, GpuSample

with warnings.catch_warnings():
    # The deprecated "pynvml" wrapper package (older venvs) warns on import; the module it
    # hands over is nvidia-ml-py's, the one berth depends on.
    warnings.simplefilter("ignore", FutureWarning)
    import pynvml


class NvmlUnavailable(Exception):
    """NVML did not load or sees no GPU; the message says why, in the user's terms."""


class NvmlInventory:
    def __init__(self, gpus: list[GpuInfo], handles: list[Any], driver: str, undeclared: int):
        self._gpus = gpus
        self._handles = handles
        self._driver = driver
        self._undeclared = undeclared
        self._open = True

    def __repr__(self) -> str:
        return f"NvmlInventory({[g.cdi_name for g in self._gpus]}, driver={self._driver!r})"

    @classmethod
    def open(cls, cdi: CdiScan | None = None) -> NvmlInventory:
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise NvmlUnavailable(f"NVML did not load ({exc})") from None
        try:
            return cls._discover(cdi or CdiScan(devices=()))
        except BaseException:
            pynvml.nvmlShutdown()
            raise

    @classmethod
    def _discover(cls, cdi: CdiScan) -> NvmlInventory:
        try:
            count = pynvml.nvmlDeviceGetCount()
            driver = _text(pynvml.nvmlSystemGetDriverVersion())
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except pynvml.NVMLError as exc:
            raise NvmlUnavailable(f"NVML loaded but could not list GPUs ({exc})") from None
        if count == 0:
            raise NvmlUnavailable(f"NVML loaded (driver {driver}) but sees no GPU")
        declared = {d.name: d.qualified_name for d in cdi.devices}
        gpus: list[GpuInfo] = []
        undeclared = 0
        for index, handle in enumerate(handles):
            uuid = _opt_text(_read(pynvml.nvmlDeviceGetUUID, handle))
            cdi_name = declared.get(str(index)) or (declared.get(uuid) if uuid else None)
            if cdi_name is None:
                undeclared += 1
                cdi_name = f"{CDI_KIND}={index}"
            memory = _read(pynvml.nvmlDeviceGetMemoryInfo, handle)
            name = _opt_text(_read(pynvml.nvmlDeviceGetName, handle)) or "NVIDIA GPU"
            total = int(memory.total) if memory is not None else None
            gpus.append(GpuInfo(index, name, cdi_name, uuid, total))
        return cls(gpus, handles, driver, undeclared)

    def gpus(self) -> list[GpuInfo]:
        return list(self._gpus)

    def sample(self) -> list[GpuSample]:
        if not self._open:
            return []
        samples = []
        for gpu, handle in zip(self._gpus, self._handles, strict=True):
            memory = _read(pynvml.nvmlDeviceGetMemoryInfo, handle)
            rates = _read(pynvml.nvmlDeviceGetUtilizationRates, handle)
            temperature = _read(
                pynvml.nvmlDeviceGetTemperature, handle, pynvml.NVML_TEMPERATURE_GPU
            )
            milliwatts = _read(pynvml.nvmlDeviceGetPowerUsage, handle)
            samples.append(
                GpuSample(
                    index=gpu.index,
                    cdi_name=gpu.cdi_name,
                    utilization_percent=float(rates.gpu) if rates is not None else None,
                    memory_used_bytes=int(memory.used) if memory is not None else None,
                    memory_total_bytes=int(memory.total) if memory is not None else None,
                    temperature_c=float(temperature) if temperature is not None else None,
                    power_w=milliwatts / 1000.0 if milliwatts is not None else None,
                )
            )
        return samples

    def describe(self) -> str:
        n = len(self._gpus)
        models = ", ".join(sorted({g.name for g in self._gpus}))
        text = f"{n} NVIDIA GPU{'s' if n != 1 else ''} via NVML (driver {self._driver}): {models}"
        if self._undeclared:
            text += (
                f"; {self._undeclared} not declared by any CDI spec, so containers cannot get "
                "them yet: run `nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`"
            )
        return text

    def close(self) -> None:
        if self._open:
            self._open = False
            pynvml.nvmlShutdown()


def _read(call: Callable[..., Any], *args: Any) -> Any:
    """One NVML reading, or None when this GPU does not report it."""
    try:
        return call(*args)
    except pynvml.NVMLError:
        return None


def _text(value: str | bytes) -> str:
    # nvidia-ml-py returns str; releases before 11.5 returned bytes.
    return value.decode() if isinstance(value, bytes) else value


def _opt_text(value: str | bytes | None) -> str | None:
    return None if value is None else _text(value)
