"""The process's garbage-collection policy while it proxies: full collections on a clock.

CPython 3.11 runs a full (generation-2) collection once the objects promoted since the last
one pass 25 % of the long-lived ones. A proxy holding thousands of long streams keeps ~90
GC-tracked objects per stream (coroutines, parsers, bound methods: ~500,000 at 9,000
streams), and every event re-parks a relay task whose wait objects live about a second,
long enough to be promoted: a full collection came every 12-15 s, took 150-640 ms, and
relayed nothing meanwhile (measured by bench/streams.py: the SSE p99 added delay was +22
to +470 ms with CPython's policy, +8.8 ms with full collections held off).

So: what exists once the process has started (modules, settings) is frozen out of every
scan (`gc.freeze`), the automatic full collection is as good as off (a generation-2
threshold no run reaches), and `collect_forever` runs one every `FULL_COLLECTION_S`: what
only a full collection frees (reference cycles among a closed connection's objects, ~21 a
stream) waits at most that long, one pause a minute instead of four or five. Young
collections (generations 0 and 1) run as before.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Final

import trio

log = logging.getLogger("proxy")

FULL_COLLECTION_S: Final = 60.0
_YOUNG: Final = (700, 10)  # CPython's own thresholds for generations 0 and 1
_FULL_NEVER: Final = 1_000_000  # generation-1 collections between automatic full ones
SLOW_COLLECTION_S: Final = 0.1  # a full collection longer than this is logged


def configure() -> None:
    """Freeze what exists now and leave full collections to `collect_forever`."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*_YOUNG, _FULL_NEVER)


async def collect_forever(period: float = FULL_COLLECTION_S) -> None:
    """A full collection every `period` seconds (on the trio thread: it has to stop the
    world anyway); never returns."""
    while True:
        await trio.sleep(period)
        started = time.perf_counter()
        found = gc.collect()
        took = time.perf_counter() - started
        if took > SLOW_COLLECTION_S:
            log.info("full garbage collection: %.0f ms, %d objects freed", took * 1000, found)
