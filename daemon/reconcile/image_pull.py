"""A deployment's image pulls: shared, run beside the rounds, and visible while they run.

Invariants:
- One pull per image at a time: a pull asked for while one of the same image is under way
  joins it (a create and `berth pull` share one download), and every caller gets its
  outcome. It runs in the worker's nursery when there is one (so `berth pull` leaving
  does not cut a pull a create waits for), else in the caller's task.
- `status()` is the pull under way now (for `berth get`), None when none is; a pull
  says so in events when it starts ("pull"), as it goes (at most once per
  PROGRESS_EVENT_INTERVAL unless it passes another PROGRESS_EVENT_STEP of its bytes), and
  when it is done ("pulled", with its duration); a failed one says why ("pull-failed"),
  once per distinct reason: its retries (a create's back-off) add no start or failure
  event while they fail the same way, but `berth pull` always says it started.
- The runtime's own idle timeout ends a stalled pull; nothing here sets a deadline.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from daemon.runtime.interface import (
    ContainerRuntime,
    PullProgress,
    RegistryAuth,
    RuntimeFailure,
    TemporaryRuntimeError,
)
from daemon.store.database import rfc3339, utc_now
from daemon.store.events import EventLog

PROGRESS_EVENT_INTERVAL = 10.0  # seconds between two progress events, at most...
PROGRESS_EVENT_STEP = 0.25  # ... unless the pull has come this much further since


@dataclass(frozen=True)
class PullStatus:
    """A pull under way, as `berth get` shows it."""

    image: str
    started_at: str  # RFC 3339
    seconds: float  # since it started
    progress: PullProgress

    def to_json(self) -> dict[str, object]:
        p = self.progress
        return {
            "image": self.image,
            "layers_done": p.layers_done,
            "layers_total": p.layers_total,
            "bytes_done": p.bytes_done,
            "bytes_total": p.bytes_total,
            "started_at": self.started_at,
            "seconds": round(self.seconds, 1),
            "summary": describe(p),
        }


def describe(progress: PullProgress) -> str:
    """ "6/11 layers, 3.1/7.4 GB" (sizes as registries give them: decimal units)."""
    text = f"{progress.layers_done}/{progress.layers_total} layers"
    if progress.bytes_total:
        text += f", {_size_pair(progress.bytes_done or 0, progress.bytes_total)}"
    return text


def _size_pair(done: int, total: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if total >= scale:
            return f"{done / scale:.1f}/{total / scale:.1f} {unit}"
    return f"{done}/{total} B"


def _fraction(progress: PullProgress) -> float:
    """How much of the bytes known so far are in. Layers are no measure: the first ones
    announced are often stored already ("1/1 layers" a moment into a 7 GB pull)."""
    if progress.bytes_total:
        return (progress.bytes_done or 0) / progress.bytes_total
    return 0.0


@dataclass
class _Pull:
    image: str
    started: float  # trio clock
    started_at: str
    progress: PullProgress = field(default_factory=PullProgress)
    changed: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)
    error: RuntimeFailure | None = None
    pulled: bool = False
    seconds: float = 0.0  # how long it took, once done

    def advanced(self, progress: PullProgress) -> None:
        self.progress = progress
        self.changed.set()


class ImagePuller:
    def __init__(
        self,
        deployment: str,
        runtime: Callable[[], ContainerRuntime],
        events: EventLog,
        nursery: Callable[[], trio.Nursery | None],
    ) -> None:
        self.deployment = deployment
        self._runtime = runtime
        self._events = events
        self._nursery = nursery
        self._pulls: dict[str, _Pull] = {}
        self._failing: dict[str, str] = {}  # image -> why its last pull failed

    def __repr__(self) -> str:
        return f"<ImagePuller {self.deployment} pulling={sorted(self._pulls)}>"

    def status(self, image: str | None = None) -> PullStatus | None:
        """The pull of `image` under way (of any image when None); None when there is none."""
        for pull in self._pulls.values():
            if image is None or pull.image == image:
                seconds = trio.current_time() - pull.started
                return PullStatus(pull.image, pull.started_at, seconds, pull.progress)
        return None

    async def pull(self, image: str, auth: RegistryAuth | None, *, why: str = "") -> PullStatus:
        """Pull `image` (or join its pull under way); how it went (its last progress and
        duration). Raises the pull's RuntimeFailure (a fresh one per caller)."""
        pull = self._pulls.get(image)
        if pull is None:
            pull = self._pulls[image] = _Pull(image, trio.current_time(), rfc3339(utc_now()))
            nursery = self._nursery()
            try:
                if nursery is None:
                    raise RuntimeError("no worker nursery")
                nursery.start_soon(self._run, pull, auth, why)
            except RuntimeError:  # none, or closed (its worker ended): run it here
                await self._run(pull, auth, why)
        await pull.done.wait()
        if pull.error is not None:
            raise type(pull.error)(str(pull.error))
        return PullStatus(pull.image, pull.started_at, pull.seconds, pull.progress)

    async def _run(self, pull: _Pull, auth: RegistryAuth | None, why: str) -> None:
        try:
            if why or pull.image not in self._failing:
                await self._say("pull", f"pulling {pull.image}{why}")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._report, pull)
                try:
                    await self._runtime().pull(pull.image, auth=auth, progress=pull.advanced)
                except RuntimeFailure as exc:
                    pull.error = exc
                else:
                    pull.pulled = True
                finally:
                    nursery.cancel_scope.cancel()
            if pull.error is not None:
                reason = str(pull.error)
                if self._failing.get(pull.image) != reason or why:
                    await self._say("pull-failed", reason, level=logging.WARNING)
                self._failing[pull.image] = reason
            if pull.pulled:
                self._failing.pop(pull.image, None)
                pull.seconds = trio.current_time() - pull.started
                await self._say(
                    "pulled",
                    f"pulled {pull.image} in {pull.seconds:.1f}s ({describe(pull.progress)})",
                )
        finally:
            if not pull.pulled and pull.error is None:  # cancelled: berthd is stopping
                pull.error = TemporaryRuntimeError(f"pull {pull.image}: cancelled")
            self._pulls.pop(pull.image, None)
            pull.done.set()

    async def _report(self, pull: _Pull) -> None:
        """Progress events, thinned (see the module's docstring)."""
        said_at, said_step = pull.started, 0
        while True:
            await pull.changed.wait()
            pull.changed = trio.Event()
            now = trio.current_time()
            step = math.floor(_fraction(pull.progress) / PROGRESS_EVENT_STEP)
            if now - said_at >= PROGRESS_EVENT_INTERVAL or step > said_step:
                said_at, said_step = now, max(step, said_step)
                seconds = now - pull.started
                await self._say(
                    "pull",
                    f"pulling {pull.image}: {describe(pull.progress)} ({seconds:.0f}s)",
                )

    async def _say(self, kind: str, message: str, *, level: int = logging.INFO) -> None:
        await self._events.emit(kind, message, deployment=self.deployment, level=level)
