"""A `ContainerRuntime` that fails, delays or hangs chosen calls of the one it wraps, on a script.

For fault-injection tests against the real `PodmanRuntime` (and against `FakeRuntime`): the
wrapped runtime does the real work, and a scripted fault comes first. A fault names a call
("list", "create", "start", "stop", "remove", "pull", "stats", "events", ...) and is
bounded by a number of calls, by a deadline on trio's clock, or by `heal`:

    faulty.fail("list", for_seconds=10)           # every list raises for 10 s
    faulty.fail("create", times=2, error=...)     # the next two creates raise `error`
    faulty.delay("pull", 10.0)                    # every pull waits 10 s, then runs
    faulty.hang("stats")                          # every stats waits until heal("stats")

A streamed call (`events`, `follow_logs`) is faulted when it starts. `calls` counts every
call by name, faulted or not, so a test can see what a part asked for.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field

import trio

from daemon.runtime.interface import (
    ContainerEvent,
    ContainerInfo,
    ContainerRuntime,
    ContainerSpec,
    ContainerStats,
    PullProgressFn,
    RegistryAuth,
    RuntimeFailure,
    TemporaryRuntimeError,
)


@dataclass
class _Fault:
    kind: str  # "fail" | "delay" | "hang"
    error: RuntimeFailure | None = None
    seconds: float = 0.0
    times: float = math.inf  # calls left
    until: float = math.inf  # trio clock
    healed: trio.Event = field(default_factory=trio.Event)

    def active(self, now: float) -> bool:
        return self.times > 0 and now < self.until and not self.healed.is_set()


class FaultyRuntime:
    def __init__(self, inner: ContainerRuntime) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self._faults: dict[str, list[_Fault]] = {}

    def __repr__(self) -> str:
        now = trio.current_time()
        active = sorted(m for m, fs in self._faults.items() if any(f.active(now) for f in fs))
        return f"<FaultyRuntime faults={active} around {self.inner!r}>"

    # -- the script ----------------------------------------------------------------------
    def fail(
        self,
        method: str,
        *,
        error: RuntimeFailure | None = None,
        times: float = math.inf,
        for_seconds: float = math.inf,
    ) -> None:
        """The next `times` calls of `method` (or all within `for_seconds`) raise `error`
        (a TemporaryRuntimeError naming the call when none is given)."""
        self._add(method, _Fault("fail", error=error), times, for_seconds)

    def delay(
        self, method: str, seconds: float, *, times: float = math.inf, for_seconds: float = math.inf
    ) -> None:
        """Calls of `method` wait `seconds` before they run."""
        self._add(method, _Fault("delay", seconds=seconds), times, for_seconds)

    def hang(self, method: str, *, times: float = math.inf) -> None:
        """Calls of `method` wait until `heal(method)` (or until cancelled), then run."""
        self._add(method, _Fault("hang"), times, math.inf)

    def heal(self, method: str | None = None) -> None:
        """End the faults of `method` (of every call when None); hung calls go on."""
        for name, faults in self._faults.items():
            if method is None or name == method:
                for fault in faults:
                    fault.healed.set()

    def _add(self, method: str, fault: _Fault, times: float, for_seconds: float) -> None:
        fault.times = times
        fault.until = trio.current_time() + for_seconds
        self._faults.setdefault(method, []).append(fault)

    async def _enter(self, method: str) -> None:
        self.calls[method] += 1
        now = trio.current_time()
        for fault in self._faults.get(method, []):
            if not fault.active(now):
                continue
            fault.times -= 1
            if fault.kind == "fail":
                raise fault.error or TemporaryRuntimeError(f"{method}: injected fault")
            if fault.kind == "delay":
                await trio.sleep(fault.seconds)
            else:
                await fault.healed.wait()

    # -- ContainerRuntime ----------------------------------------------------------------
    async def version(self) -> str:
        await self._enter("version")
        return await self.inner.version()

    async def image_exists(self, image: str) -> bool:
        await self._enter("image_exists")
        return await self.inner.image_exists(image)

    async def pull(
        self,
        image: str,
        *,
        auth: RegistryAuth | None = None,
        progress: PullProgressFn | None = None,
    ) -> None:
        await self._enter("pull")
        await self.inner.pull(image, auth=auth, progress=progress)

    async def create(self, spec: ContainerSpec) -> str:
        await self._enter("create")
        return await self.inner.create(spec)

    async def start(self, container_id: str) -> None:
        await self._enter("start")
        await self.inner.start(container_id)

    async def stop(self, container_id: str, *, timeout: float) -> None:  # noqa: ASYNC109
        await self._enter("stop")
        await self.inner.stop(container_id, timeout=timeout)

    async def remove(self, container_id: str) -> None:
        await self._enter("remove")
        await self.inner.remove(container_id)

    async def inspect(self, container_id: str) -> ContainerInfo:
        await self._enter("inspect")
        return await self.inner.inspect(container_id)

    async def list(self, labels: Mapping[str, str]) -> list[ContainerInfo]:
        await self._enter("list")
        return await self.inner.list(labels)

    async def stats(self, container_id: str) -> ContainerStats:
        await self._enter("stats")
        return await self.inner.stats(container_id)

    async def stats_many(self, container_ids: Sequence[str]) -> dict[str, ContainerStats]:
        await self._enter("stats_many")
        return await self.inner.stats_many(container_ids)

    async def logs(self, container_id: str, *, tail: int | None = None) -> bytes:
        await self._enter("logs")
        return await self.inner.logs(container_id, tail=tail)

    async def follow_logs(
        self, container_id: str, *, tail: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        await self._enter("follow_logs")
        async with aclosing(self.inner.follow_logs(container_id, tail=tail)) as chunks:
            async for chunk in chunks:
                yield chunk

    async def events(self, labels: Mapping[str, str]) -> AsyncGenerator[ContainerEvent, None]:
        await self._enter("events")
        async with aclosing(self.inner.events(labels)) as events:
            async for event in events:
                yield event

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def volume_exists(self, name: str) -> bool:
        await self._enter("volume_exists")
        return await self.inner.volume_exists(name)

    async def create_volume(self, name: str, *, labels: Mapping[str, str] | None = None) -> None:
        await self._enter("create_volume")
        await self.inner.create_volume(name, labels=labels)

    async def volume_labels(self, name: str) -> Mapping[str, str] | None:
        await self._enter("volume_labels")
        return await self.inner.volume_labels(name)
