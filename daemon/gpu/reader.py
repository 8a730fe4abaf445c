"""GPU samples without letting a wedged driver take berthd's threads: one NVML call at a time.

NVML calls block, and a wedged driver blocks them for ever. Every reader of GPU samples (the
metrics sampler, the Prometheus snapshot, placement's free-memory check) goes through one
`GpuReader`, which runs `inventory.sample()` in a thread of its own limiter (one thread),
bounded by `timeout`:

- A call that does not return in time is abandoned (its thread keeps running; it is the only
  one) and the caller gets no samples: GPU figures read as unknown, never as zero.
- While an abandoned call is still outstanding, no new one starts: `sample` answers no
  samples at once. The stall is said once in the log, and its end once.
"""

from __future__ import annotations

import logging

import trio

from daemon.gpu.model import GpuInventory, GpuSample

log = logging.getLogger("berthd")

SAMPLE_TIMEOUT = 5.0  # NVML answers in milliseconds; this long means the driver is stuck


class GpuReader:
    def __init__(self, inventory: GpuInventory, *, timeout: float = SAMPLE_TIMEOUT) -> None:
        self.inventory = inventory
        self._timeout = timeout
        self._limiter = trio.CapacityLimiter(1)
        # Calls begun (trio's side) and calls over (the thread's side, as its last step): a
        # difference is a call still outstanding. Plain counters: each is written by one side.
        self._begun = 0
        self._over = 0
        self._said_stuck = False

    def __repr__(self) -> str:
        return f"<GpuReader {self.inventory!r} {'stuck' if self.stuck else 'ok'}>"

    @property
    def stuck(self) -> bool:
        """An abandoned call has not returned yet."""
        return self._begun != self._over

    async def sample(self) -> list[GpuSample]:
        """Every GPU's figures now; [] when the inventory has none or the driver is stuck."""
        if self.stuck:
            return []
        if self._said_stuck:
            self._said_stuck = False
            log.warning("GPU samples: NVML answered again")

        def read() -> list[GpuSample]:
            try:
                return self.inventory.sample()
            finally:
                self._over += 1

        self._begun += 1
        with trio.move_on_after(self._timeout):
            return await trio.to_thread.run_sync(
                read, limiter=self._limiter, abandon_on_cancel=True
            )
        self._said_stuck = True
        log.error(
            "GPU samples: NVML did not answer within %gs; GPU figures unknown until it does",
            self._timeout,
        )
        return []
