"""`CachingRuntime`: a `ContainerRuntime` whose `list` reads a watched cache, not Podman.

Informer-style (client-go, controller-runtime): the containers of one berthd instance (those
carrying every label of `scope`) are held in memory, kept current by Podman's event stream,
and resynced by a full list. Every other call goes to the wrapped runtime unchanged.

    runtime = CachingRuntime(PodmanRuntime(url), scope={LABEL_INSTANCE: instance},
                             on_change=nudge)
    await nursery.start(runtime.run)      # started: the first full list has been tried

Invariants:
- The view is what the last read said: a full list (when the stream opens, `SETTLE` later,
  every `resync_every`, and after a read failed), or an inspect of one container after an
  event about it (coalesced: a burst is one inspect); a "remove" event drops it unread.
- `list(labels)` within the scope answers from the view; outside it, from Podman. While the
  view is not known to be current it raises TemporaryRuntimeError ("unknown", never an
  empty or stale answer): before the first full list succeeds, and from a failed read (a
  list, an inspect after an event, the stream failing while its resync failed) until a
  full list that started after that failure succeeds.
- Reads race (an event's inspect, a caller's own create, a resync). Each read takes a
  ticket when it starts; a container's entry is replaced only by a read that started after
  the one that wrote it, so an older answer never undoes a newer one, and a removed
  container stays removed (ids are never reused) while any read that began before its
  removal is still out.
- The wrapper's own create, start and stop update the view (an inspect of that container)
  and its remove drops it, before they return: the caller's next round sees its own change.
- Every change of the view (a container appearing, going, or changing status) is told to
  `on_change(labels)` after it is applied, so a round that it starts reads the new view.
- The stream fails alone (STYLE.md #17): one that breaks, or raises anything unexpected, is
  logged and reopened, at once when it had lived a while, else with a back-off and a full
  list each time, so the view is never older than `RETRY_MAX` while Podman answers lists.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import aclosing

import trio

from daemon.runtime.interface import (
    ContainerEvent,
    ContainerInfo,
    ContainerNotFound,
    ContainerRuntime,
    ContainerSpec,
    ContainerStats,
    PullProgressFn,
    RegistryAuth,
    RuntimeFailure,
    TemporaryRuntimeError,
)

log = logging.getLogger("berthd")

RESYNC_EVERY = 30.0
# A full list this long after the stream (re)opens: the stream is live a moment after the
# request is sent, and a change in between would otherwise wait for the next resync.
SETTLE = 1.0
RETRY_MIN = 0.5
RETRY_MAX = 5.0
# A stream that lived this long before it broke is reopened at once.
STABLE_STREAM = 10.0

OnChange = Callable[[Mapping[str, str]], None]


class CachingRuntime:
    def __init__(
        self,
        inner: ContainerRuntime,
        *,
        scope: Mapping[str, str],
        on_change: OnChange | None = None,
        resync_every: float = RESYNC_EVERY,
        settle: float = SETTLE,
    ) -> None:
        self.inner = inner
        self.scope = dict(scope)
        self._on_change = on_change
        self.resync_every = resync_every
        self.settle = settle
        self._view: dict[str, ContainerInfo] = {}
        # Container id -> the ticket of the read that last set (or removed) its entry.
        self._written: dict[str, int] = {}
        self._tickets = 0
        self._reading: dict[int, int] = {}  # tickets of the reads under way (a multiset)
        self._synced = False
        self._lost_at = 0  # the ticket of the latest failed read
        self._why = "containers not listed yet"
        self._wake = trio.Event()  # a resync is wanted, or the stream broke
        self._resync_wanted = False
        self._stream_broken: str | None = None  # why the stream broke, once it has
        self._pending: dict[str, None] = {}  # ids whose events await an inspect, in order
        self._pending_added = trio.Event()
        self.resyncs = 0
        self.stream_breaks = 0

    def __repr__(self) -> str:
        state = "synced" if self._synced else f"unknown ({self._why})"
        return (
            f"<CachingRuntime {state} containers={len(self._view)} resyncs={self.resyncs}"
            f" stream_breaks={self.stream_breaks} around {self.inner!r}>"
        )

    @property
    def synced(self) -> bool:
        """Whether `list` answers from the view now (it raises while this is False)."""
        return self._synced

    # -- the watch ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch and resync until cancelled; started once the first full list was tried."""
        delay = 0.0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._inspect_pending)
            while True:
                opened = trio.current_time()
                why = await self._watch(task_status)
                task_status = trio.TASK_STATUS_IGNORED
                self.stream_breaks += 1
                if trio.current_time() - opened >= STABLE_STREAM:
                    log.warning("podman event stream broke (%s); reopening it", why)
                    delay = 0.0
                    continue
                log.debug("podman event stream broke again (%s)", why)
                delay = min(max(2 * delay, RETRY_MIN), RETRY_MAX)
                await self._resync()  # keep the view current while the stream is down
                await trio.sleep(delay)

    async def _watch(self, task_status: trio.TaskStatus[None]) -> str:
        """One life of the event stream: open it, list, resync on schedule until it breaks;
        returns why it broke."""
        self._stream_broken = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read_events)
            ok = await self._resync()
            task_status.started()
            retry = RETRY_MIN
            next_at = trio.current_time() + (self.settle if ok else retry)
            while self._stream_broken is None:
                with trio.move_on_at(next_at):
                    await self._wake.wait()
                self._wake = trio.Event()
                if self._stream_broken is not None:
                    break
                if self._resync_wanted or trio.current_time() >= next_at:
                    if await self._resync():
                        retry, next_at = RETRY_MIN, trio.current_time() + self.resync_every
                    else:
                        next_at = trio.current_time() + retry
                        retry = min(2 * retry, RETRY_MAX)
            nursery.cancel_scope.cancel()
        return self._stream_broken

    async def _read_events(self) -> None:
        why = "the stream ended"
        try:
            async with aclosing(self.inner.events(self.scope)) as events:
                async for event in events:
                    self._event(event)
        except RuntimeFailure as exc:
            why = str(exc)
        except Exception as exc:  # noqa: BLE001 - the stream's barrier: it fails alone
            log.exception("podman event stream failed; listing containers, then reopening it")
            why = f"{type(exc).__name__}: {exc}"
        self._stream_broken = why
        self._wake.set()

    def _event(self, event: ContainerEvent) -> None:
        if not event.container_id:
            return
        if event.action == "remove":
            ticket = self._begin()
            self._put(ticket, event.container_id, None)
            self._end(ticket)
            return
        self._pending[event.container_id] = None
        self._pending_added.set()

    async def _inspect_pending(self) -> None:
        while True:
            await self._pending_added.wait()
            self._pending_added = trio.Event()
            while self._pending:
                container_id = next(iter(self._pending))
                del self._pending[container_id]
                await self._refresh(container_id)

    # -- reads -------------------------------------------------------------------------

    def _begin(self) -> int:
        self._tickets += 1
        self._reading[self._tickets] = self._reading.get(self._tickets, 0) + 1
        return self._tickets

    def _end(self, ticket: int) -> None:
        left = self._reading.pop(ticket) - 1
        if left:
            self._reading[ticket] = left

    def _put(self, ticket: int, container_id: str, info: ContainerInfo | None) -> None:
        """Apply what the read `ticket` found about one container, unless a read that
        started later has already written its entry."""
        if ticket <= self._written.get(container_id, 0):
            return
        self._written[container_id] = ticket
        old = self._view.get(container_id)
        if info is None:
            self._view.pop(container_id, None)
        else:
            self._view[container_id] = info
        changed = info if info is not None else old
        if changed is not None and old != info and self._on_change is not None:
            self._on_change(changed.labels)

    def _lost(self, ticket: int, why: str, *, resync: bool = True) -> None:
        """A read failed: the view may miss a change until a list newer than it succeeds
        (one is asked for at once, unless the failed read was a list: that one retries on
        its own schedule)."""
        if self._synced:
            log.warning("container view unknown until containers are listed again: %s", why)
        self._synced, self._why = False, why
        self._lost_at = max(self._lost_at, ticket)
        if resync:
            self._resync_wanted = True
            self._wake.set()

    async def _resync(self) -> bool:
        """A full list of the scope; True when it succeeded."""
        self._resync_wanted = False
        ticket = self._begin()
        try:
            listed = await self.inner.list(self.scope)
        except RuntimeFailure as exc:
            self._lost(ticket, str(exc), resync=False)
            return False
        finally:
            self._end(ticket)
        found = {c.container_id for c in listed}
        for info in listed:
            self._put(ticket, info.container_id, info)
        for container_id in [c for c in self._view if c not in found]:
            self._put(ticket, container_id, None)
        # A ticket older than every read still out can no longer be undercut: forget it (so
        # removed containers are not remembered for ever).
        oldest = min(self._reading, default=self._tickets + 1)
        self._written = {c: t for c, t in self._written.items() if t >= oldest}
        self.resyncs += 1
        if ticket > self._lost_at:
            if not self._synced and self.resyncs > 1:
                log.info("container view current again (%d containers)", len(self._view))
            self._synced = True
        return True

    async def _refresh(self, container_id: str) -> None:
        """Read one container again (after an event, or after this wrapper changed it)."""
        ticket = self._begin()
        try:
            try:
                info: ContainerInfo | None = await self.inner.inspect(container_id)
            except ContainerNotFound:
                info = None
            except RuntimeFailure as exc:
                self._lost(ticket, f"inspect {container_id[:12]}: {exc}")
                return
            if info is not None and not _carries(info.labels, self.scope):
                info = None
            self._put(ticket, container_id, info)
        finally:
            self._end(ticket)

    # -- ContainerRuntime: list from the view ------------------------------------------

    async def list(self, labels: Mapping[str, str]) -> list[ContainerInfo]:
        if not _carries(labels, self.scope):
            return await self.inner.list(labels)
        if not self._synced:
            raise TemporaryRuntimeError(f"list containers: {self._why}")
        return [c for c in self._view.values() if _carries(c.labels, labels)]

    # -- ContainerRuntime: changes, then the view follows -------------------------------

    async def create(self, spec: ContainerSpec) -> str:
        container_id = await self.inner.create(spec)
        if _carries(spec.labels, self.scope):
            await self._refresh(container_id)
        return container_id

    async def start(self, container_id: str) -> None:
        try:
            await self.inner.start(container_id)
        except RuntimeFailure:
            await self._refresh(container_id)  # a failed start can still change its state
            raise
        await self._refresh(container_id)

    async def stop(self, container_id: str, *, timeout: float) -> None:  # noqa: ASYNC109
        try:
            await self.inner.stop(container_id, timeout=timeout)
        except RuntimeFailure:
            await self._refresh(container_id)
            raise
        await self._refresh(container_id)

    async def remove(self, container_id: str) -> None:
        try:
            await self.inner.remove(container_id)
        except RuntimeFailure:
            await self._refresh(container_id)
            raise
        ticket = self._begin()
        for known in [c for c in self._view if c.startswith(container_id)] or [container_id]:
            self._put(ticket, known, None)
        self._end(ticket)

    # -- ContainerRuntime: the rest, as they are ----------------------------------------

    async def version(self) -> str:
        return await self.inner.version()

    async def image_exists(self, image: str) -> bool:
        return await self.inner.image_exists(image)

    async def pull(
        self,
        image: str,
        *,
        auth: RegistryAuth | None = None,
        progress: PullProgressFn | None = None,
    ) -> None:
        await self.inner.pull(image, auth=auth, progress=progress)

    async def inspect(self, container_id: str) -> ContainerInfo:
        return await self.inner.inspect(container_id)

    async def stats(self, container_id: str) -> ContainerStats:
        return await self.inner.stats(container_id)

    async def stats_many(self, container_ids: Sequence[str]) -> dict[str, ContainerStats]:
        return await self.inner.stats_many(container_ids)

    async def logs(self, container_id: str, *, tail: int | None = None) -> bytes:
        return await self.inner.logs(container_id, tail=tail)

    def follow_logs(
        self, container_id: str, *, tail: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        return self.inner.follow_logs(container_id, tail=tail)

    def events(self, labels: Mapping[str, str]) -> AsyncGenerator[ContainerEvent, None]:
        return self.inner.events(labels)

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def volume_exists(self, name: str) -> bool:
        return await self.inner.volume_exists(name)

    async def create_volume(self, name: str, *, labels: Mapping[str, str] | None = None) -> None:
        await self.inner.create_volume(name, labels=labels)

    async def volume_labels(self, name: str) -> Mapping[str, str] | None:
        return await self.inner.volume_labels(name)


def _carries(labels: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in wanted.items())
