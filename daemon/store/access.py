"""The daemon's door to the store: every call runs in a worker thread, one at a time.

The store is synchronous SQLite; calling it on the trio thread would block every endpoint and
every probe for the length of a disk write. Calls are serialised with a lock because one
SQLite connection must not be used by two threads at once.
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

    async def call(
        self, method: Callable[Concatenate[Store, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        async with self._lock:
            return await trio.to_thread.run_sync(partial(method, self.store, *args, **kwargs))
