"""The event log: what berthd did and why, kept in the store and told to followers at once.

`emit` writes the event (through the store, in a thread) and logs it as a structured line on
stderr (journald keeps those). Followers (`berth events -f`) wait on `changed()` and then read
the store from the last id they saw, so no event is missed between two waits. `prune_forever`
keeps the log bounded: events older than `keep` seconds, and all but the newest `max_rows`,
go once an hour.

Who caused an event: an admin request runs its handler inside `acting_as(uid)` (the caller's
uid from SO_PEERCRED), and every event the handler emits records that uid (`Event.uid`;
`berth events` shows `uid=1000`). Only the handler's own task counts: a task started from it
(a deployment's worker, started by its first apply, lives on for good) inherits the context
but not the caller. Events berthd emits of its own accord (a reconcile round, a probe, a
specs directory read at start) have none; what a worker does later because of an apply is
berthd's doing, and the apply's own event says who asked for it. A web console action
(daemon/console) runs inside `acting_as(None, console_user=NAME)`: its events' messages end
with "(by console user NAME)".
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import timedelta

import trio

from daemon.store.access import StoreAccess
from daemon.store.database import Event, Store, utc_now

log = logging.getLogger("berthd")

# The task handling an admin request, its caller's uid, and the console user who asked.
_Actor = tuple[trio.lowlevel.Task, int | None, str | None]
_ACTOR: ContextVar[_Actor | None] = ContextVar("berth_actor", default=None)


@contextmanager
def acting_as(uid: int | None, *, console_user: str | None = None) -> Iterator[None]:
    """Within this block, events this task emits record `uid` (and the console user) as
    their cause."""
    actor = None
    if uid is not None or console_user is not None:
        actor = (trio.lowlevel.current_task(), uid, console_user)
    token = _ACTOR.set(actor)
    try:
        yield
    finally:
        _ACTOR.reset(token)


def _current_actor() -> tuple[int | None, str | None]:
    actor = _ACTOR.get()
    if actor is None or actor[0] is not trio.lowlevel.current_task():
        return None, None
    return actor[1], actor[2]


class EventLog:
    def __init__(self, store: StoreAccess) -> None:
        self._store = store
        self._changed = trio.Event()

    async def emit(
        self,
        kind: str,
        message: str,
        *,
        deployment: str | None = None,
        replica: str | None = None,
        level: int = logging.INFO,
    ) -> Event:
        uid, console_user = _current_actor()
        if console_user is not None:
            message = f"{message} (by console user {console_user})"
        event = await self._store.call(
            Store.add_event, kind, message, deployment=deployment, replica=replica, uid=uid
        )
        log.log(
            level,
            message,
            extra={"deployment": deployment, "replica": replica, "event": kind, "uid": uid},
        )
        self._changed.set()
        self._changed = trio.Event()
        return event

    async def wait_changed(self) -> None:
        await self._changed.wait()

    async def prune_forever(self, *, keep: float, max_rows: int, every: float = 3600.0) -> None:
        while True:
            before = utc_now() - timedelta(seconds=keep)
            dropped = await self._store.call(Store.prune_events, before, max_rows)
            if dropped:
                log.info("event log: %d old events dropped", dropped)
            await trio.sleep(every)
