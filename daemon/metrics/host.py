"""Host-wide CPU and memory, from psutil (which also tells berthd its own processes apart:
`daemon.store.runs`, `daemon.runtime.service_record`).

Blocking by contract (psutil reads /proc): the sampler calls `PsutilHost()` in a thread.
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil  # type: ignore[import-untyped]  # psutil ships no type information


@dataclass(frozen=True)
class HostReading:
    cpu_percent: float | None  # of the whole host since the previous reading
    memory_used_bytes: int | None  # total - available: what programs hold, caches excluded
    memory_total_bytes: int | None


class PsutilHost:
    """Reads host CPU and memory. The first reading has no CPU figure: psutil measures CPU
    use between two calls, and a figure since boot would say nothing about now."""

    def __init__(self) -> None:
        self._primed = False

    def __repr__(self) -> str:
        return f"<PsutilHost primed={self._primed}>"

    def __call__(self) -> HostReading:
        cpu = float(psutil.cpu_percent(interval=None))
        primed, self._primed = self._primed, True
        memory = psutil.virtual_memory()
        total = int(memory.total)
        return HostReading(
            cpu_percent=cpu if primed else None,
            memory_used_bytes=total - int(memory.available),
            memory_total_bytes=total,
        )
