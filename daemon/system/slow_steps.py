"""A diagnostic: every trio task step, and every scheduler batch, longer than a threshold,
logged with where it was.

berthd runs its control plane (reconcile rounds, Podman list resyncs, probes, the metrics
sampler, the admin API) and every endpoint's proxy on one trio thread, so whatever holds
the thread for 40 ms delays every stream's next event by as much. `BERTH_SLOW_STEP_MS=N`
(read by `daemon.main`; off when unset or 0) adds `SlowSteps` to `trio.run`'s instruments:

- A step (`before_task_step` to `after_task_step`) over N ms is logged with the task's
  name, its length and two places: `during`, the innermost frames of the trio thread while
  the step ran (sampled once per slow step by a watcher thread as the step passes N: the
  line that holds the thread, e.g. a JSON parse or an SQLite call), and `ended at`, the
  coroutine chain (`cr_await` from `task.coro`) where the step gave the thread back.
- A batch (`after_io_wait` to the next `before_io_wait`: every task trio ran between two
  looks at I/O) over N ms is logged with its steps, its busiest tasks and the trio
  thread's CPU time in it. Wall time well over that CPU time means the thread was not
  running: the kernel ran another process (on a small box, the replicas or clients on the
  same host), or another thread of berthd held the GIL (`top -H` / per-thread CPU tell
  which). An earlier version also read the context switches and the other threads' CPU
  each batch: ~10 % of berthd's busy time under 9,000 streams (py-spy), so not kept.
- `after_run` logs the summary: steps, total time in steps, the count in each bin
  (`BINS_MS`), how many steps and batches passed N, and the longest steps.

An ordinary step costs two clock reads, a bisect and a dict update; a batch one more
clock (the thread's CPU time, ~0.6 us). Only a slow step reads any frame. The watcher
wakes every N / 4 and takes the GIL for microseconds when it does. Cheap, not free: off by
default. A garbage collection inside a step shows up as that step (proxy.gc_policy logs
those over 20 ms).
"""

from __future__ import annotations

import bisect
import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from types import FrameType
from typing import Final

import trio

log = logging.getLogger("berthd.slow_steps")

ENV: Final = "BERTH_SLOW_STEP_MS"
BINS_MS: Final = (1.0, 5.0, 10.0, 20.0, 50.0, 100.0)  # upper bounds; the last bin is over 100
LONGEST_KEPT: Final = 10
FRAMES_SHOWN: Final = 6


def threshold_from(environ: dict[str, str]) -> float | None:
    """The threshold in seconds from `BERTH_SLOW_STEP_MS`; None when off (unset, empty, 0).
    A value that is not a number >= 0 is refused (ValueError naming the variable)."""
    raw = environ.get(ENV, "").strip()
    if not raw:
        return None
    try:
        ms = float(raw)
    except ValueError:
        raise ValueError(f"{ENV}: {raw!r} is not a number of milliseconds") from None
    if not ms >= 0 or ms == float("inf"):
        raise ValueError(f"{ENV}: {raw!r} is not a number of milliseconds >= 0")
    return ms / 1000 if ms > 0 else None


def _frames(frame: FrameType | None) -> str:
    """The innermost `FRAMES_SHOWN` frames from `frame` outward, innermost first (names and
    line numbers only: no source read, which would give the GIL back mid-sample)."""
    shown: list[str] = []
    while frame is not None and len(shown) < FRAMES_SHOWN:
        code = frame.f_code
        shown.append(f"{code.co_name} ({code.co_filename}:{frame.f_lineno})")
        frame = frame.f_back
    return " < ".join(shown) or "?"


def _suspended_at(coro: object) -> str:
    """Where a coroutine chain is suspended: the innermost frames of its `cr_await` chain."""
    chain: list[str] = []
    current: object = coro
    for _ in range(64):  # a bound: a chain is never this deep
        frame = getattr(current, "cr_frame", None) or getattr(current, "gi_frame", None)
        if frame is not None:
            chain.append(f"{frame.f_code.co_name} ({frame.f_code.co_filename}:{frame.f_lineno})")
        current = getattr(current, "cr_await", None) or getattr(current, "gi_yieldfrom", None)
        if current is None:
            break
    return " < ".join(reversed(chain[-FRAMES_SHOWN:])) or "?"


@dataclass(order=True)
class SlowStep:
    seconds: float
    task: str = field(compare=False)
    during: str = field(compare=False)
    ended_at: str = field(compare=False)


class SlowSteps(trio.abc.Instrument):
    """See the module docstring. One instance per `trio.run`."""

    def __init__(self, threshold: float, *, watch: bool = True) -> None:
        self.threshold = threshold
        self.steps = 0
        self.total = 0.0
        self.bins = [0] * (len(BINS_MS) + 1)
        self.slow = 0  # steps over the threshold
        self.longest: list[SlowStep] = []  # at most LONGEST_KEPT, longest first
        self._bounds = [ms / 1000 for ms in BINS_MS]
        self._began = 0.0
        self._step = 0  # the step running now (odd while one runs)
        self._sampled: tuple[int, str] | None = None  # (step, frames) the watcher took
        self._thread_id = threading.get_ident()
        self._watch = watch
        self.slow_batches = 0  # scheduler batches over the threshold
        self._batch_began = 0.0  # wall and this thread's CPU clock at the batch's start
        self._batch_cpu = 0.0
        self._batch_steps = 0
        self._batch_by_task: dict[str, list[float]] = {}  # name -> [steps, seconds]
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    # trio.abc.Instrument

    def before_run(self) -> None:
        self._thread_id = threading.get_ident()
        if self._watch and self._watcher is None:
            self._watcher = threading.Thread(
                target=self._watch_steps, name="berthd slow-step watcher", daemon=True
            )
            self._watcher.start()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._began = time.perf_counter()  # before the step number: the watcher reads
        self._step += 1  # the number first, so a new number never meets an old clock

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        took = time.perf_counter() - self._began
        step = self._step
        self._step += 1
        self.steps += 1
        self.total += took
        self.bins[bisect.bisect_left(self._bounds, took)] += 1
        if took > self.threshold:
            self._slow(task, took, step)
        self._batch_steps += 1
        spent = self._batch_by_task.get(task.name)
        if spent is None:
            self._batch_by_task[task.name] = [1, took]
        else:
            spent[0] += 1
            spent[1] += took

    def after_io_wait(self, timeout: float) -> None:
        self._batch_began = time.perf_counter()
        self._batch_cpu = time.thread_time()
        self._batch_steps = 0
        self._batch_by_task.clear()

    def before_io_wait(self, timeout: float) -> None:
        if not self._batch_began:
            return
        took = time.perf_counter() - self._batch_began
        if took > self.threshold:
            self._slow_batch(took, time.thread_time() - self._batch_cpu)

    def after_run(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=1.0)
        log.info("%s", self.summary())

    # the rest

    def _slow(self, task: trio.lowlevel.Task, took: float, step: int) -> None:
        sampled = self._sampled
        during = sampled[1] if sampled is not None and sampled[0] == step else "not sampled"
        self.slow += 1
        found = SlowStep(took, task.name, during, _suspended_at(task.coro))
        log.warning(
            "slow trio step: %.1f ms in task %s; during: %s; ended at: %s",
            took * 1000,
            found.task,
            found.during,
            found.ended_at,
        )
        self.longest.append(found)
        self.longest.sort(reverse=True)
        del self.longest[LONGEST_KEPT:]

    def _slow_batch(self, took: float, cpu: float) -> None:
        self.slow_batches += 1
        busiest = sorted(self._batch_by_task.items(), key=lambda kv: -kv[1][1])[:5]
        log.warning(
            "slow trio batch: %.1f ms from one I/O check to the next (this thread's CPU "
            "%.1f ms), %d steps in %.1f ms; busiest: %s",
            took * 1000,
            cpu * 1000,
            self._batch_steps,
            sum(seconds for _, seconds in self._batch_by_task.values()) * 1000,
            ", ".join(f"{name} x{n:.0f} {sec * 1000:.1f} ms" for name, (n, sec) in busiest),
        )

    def _watch_steps(self) -> None:
        """The watcher thread: once a step has run past the threshold, the trio thread's
        frames, once for that step."""
        period = max(self.threshold / 4, 0.001)
        while not self._stop.wait(period):
            step, began = self._step, self._began
            if step % 2 == 0:  # between steps
                continue
            if self._sampled is not None and self._sampled[0] == step:
                continue
            if time.perf_counter() - began < self.threshold:
                continue
            frame = sys._current_frames().get(self._thread_id)
            if step == self._step:  # still the same step: the frames are its
                self._sampled = (step, _frames(frame))

    def summary(self) -> str:
        labels = [f"<={ms:g}ms" for ms in BINS_MS] + [f">{BINS_MS[-1]:g}ms"]
        bins = " ".join(f"{label}:{n}" for label, n in zip(labels, self.bins, strict=True))
        longest = "; ".join(
            f"{s.seconds * 1000:.1f} ms {s.task} (during: {s.during})" for s in self.longest[:3]
        )
        return (
            f"trio steps: {self.steps} in {self.total:.1f} s; {bins}; "
            f"over {self.threshold * 1000:g} ms: {self.slow} steps, {self.slow_batches} batches"
            + (f"; longest: {longest}" if longest else "")
        )
