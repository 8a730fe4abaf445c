"""Swaps and cold starts per deployment, counted from the event log since berthd started.

The swap logic (`daemon.reconcile.zero`) says what it does as events, `swap` and
`cold-start`, each naming the woken deployment (a swap made room for it: its victims are in
the message); `follow` reads every event after the newest one at
its start and counts those two kinds by that deployment, keeping the latest `swap` whole (as
`GET /v1/gateway` shows it). Counters start at 0 with each berthd, as Prometheus expects of a
`_total` after a restart. The log is read when it changes (and every `BACKSTOP` seconds,
for an emit that fell between a read and the next wait), one query a batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Final

import trio

from daemon.store.access import StoreAccess
from daemon.store.database import Event, Store
from daemon.store.events import EventLog

SWAP: Final = "swap"
COLD_START: Final = "cold-start"
BACKSTOP: Final = 30.0


@dataclass
class ModelCounts:
    swaps: int = 0
    cold_starts: int = 0
    last_swap: dict[str, object] | None = None  # the latest `swap` event, as JSON


def count(counts: MutableMapping[str, ModelCounts], event: Event) -> None:
    """Count one event (those of other kinds, or of no deployment, are left alone)."""
    if event.deployment is None or event.kind not in (SWAP, COLD_START):
        return
    c = counts.setdefault(event.deployment, ModelCounts())
    if event.kind == SWAP:
        c.swaps += 1
        c.last_swap = dataclasses.asdict(event)
    else:
        c.cold_starts += 1


async def follow(
    events: EventLog, store: StoreAccess, counts: MutableMapping[str, ModelCounts]
) -> None:
    """Count every swap and cold-start event from now on (runs until cancelled)."""
    recent = await store.call(Store.events, limit=1)
    last = recent[-1].id if recent else 0
    while True:
        for event in await store.call(Store.events, after_id=last):
            last = event.id
            count(counts, event)
        with trio.move_on_after(BACKSTOP):
            await events.wait_changed()
