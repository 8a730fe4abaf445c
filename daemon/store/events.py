"""The event log: what berthd did and why, kept in the store and told to followers at once.

`emit` writes the event (through the store, in a thread) and logs it as a structured line on
stderr (journald keeps those). Followers (`berth events -f`) wait on `changed()` and then read
the store from the last id they saw, so no event is missed between two waits. `prune_forever`
keeps the log bounded: events older than `keep` seconds, and all but the newest `max_rows`,
go once an hour.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import trio

from daemon.store.access import StoreAccess
from daemon.store.database import Event, Store, utc_now

log = logging.getLogger("berthd")


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
        event = await self._store.call(
            Store.add_event, kind, message, deployment=deployment, replica=replica
        )
        log.log(
            level,
            message,
            extra={"deployment": deployment, "replica": replica, "event": kind},
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
