"""Where the metrics sampler keeps its per-minute rollups: the store, through the daemon's door.

`RollupStore` is what the sampler needs; `StoreRollups` is the real one, over `StoreAccess`
(a worker thread, one call at a time). A failing disk loses metrics, logged; it never stops
the sampler or berthd.
"""

from __future__ import annotations

import logging
import sqlite3
from datetime import datetime
from typing import Protocol

from daemon.store.access import StoreAccess
from daemon.store.database import MetricRollup, Store, rfc3339

log = logging.getLogger("berthd.metrics")


class RollupStore(Protocol):
    async def write(self, rows: list[MetricRollup]) -> None: ...
    async def read(
        self, deployment: str, since: datetime, until: datetime | None = None
    ) -> list[MetricRollup]: ...
    async def prune(self, before: datetime) -> None: ...


class StoreRollups:
    def __init__(self, access: StoreAccess) -> None:
        self._access = access

    async def write(self, rows: list[MetricRollup]) -> None:
        try:
            await self._access.call(Store.add_metric_rollups, rows)
        except sqlite3.Error as exc:
            log.warning("metrics: could not write %d rollups: %s", len(rows), exc)

    async def read(
        self, deployment: str, since: datetime, until: datetime | None = None
    ) -> list[MetricRollup]:
        return await self._access.call(Store.metric_rollups, deployment, since, until)

    async def prune(self, before: datetime) -> None:
        try:
            removed = await self._access.call(Store.prune_metrics, before)
        except sqlite3.Error as exc:
            log.warning("metrics: could not prune rollups: %s", exc)
        else:
            if removed:
                log.info("metrics: pruned %d rollups from before %s", removed, rfc3339(before))
