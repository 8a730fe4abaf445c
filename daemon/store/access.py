"""The daemon's door to the store: every call runs in a worker thread, one at a time.

The store is synchronous SQLite; calling it on the trio thread would block every endpoint and
every probe for the length of a disk write. Calls are serialised because one SQLite
connection must not be used by two threads at once, on a capacity limiter of the store's own
(one thread): a part that ties up trio's shared threads (a hung NVML call, a slow Podman)
never makes a store call wait. `stalled_for` tells the watchdog how long the call in flight
has been running.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Concatenate, ParamSpec, TypeVar

import trio

from daemon.store.database import Store

P = ParamSpec("P")
T = TypeVar("T")


class StoreAccess:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = trio.Lock()
        self._limiter = trio.CapacityLimiter(1)  # the store's own thread
        self._since: float | None = None  # when the call in flight began (trio clock)

    def __repr__(self) -> str:
        return f"<StoreAccess {self.store!r} busy={self._since is not None}>"

    async def call(
        self, method: Callable[Concatenate[Store, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        async with self._lock:
            self._since = trio.current_time()
            try:
                return await trio.to_thread.run_sync(
                    partial(method, self.store, *args, **kwargs), limiter=self._limiter
                )
            finally:
                self._since = None

    def stalled_for(self) -> float:
        """Seconds the store call in flight has been running; 0.0 when none is."""
        return 0.0 if self._since is None else trio.current_time() - self._since
