"""The process's garbage-collection policy while it proxies: full collections on a long
period, or after many closes beside few open connections; never on CPython's trigger.

CPython 3.11 runs a full (generation-2) collection once the objects promoted since the last
one pass 25 % of the long-lived ones, and a full collection scans everything the process
holds. A proxy holding thousands of long streams keeps ~50-90 GC-tracked objects per stream
(its task's coroutines, parsers, connections: ~500,000 at 9,000 streams), so one full
collection took 150-220 ms here (up to 640 ms on a busy box) and relayed nothing meanwhile.
With the task relay each event re-parked the stream's task, and its wait objects lived
about a second, long enough to be promoted: a full collection came every 12-15 s
(bench/streams.py: SSE p99 added +22 to +470 ms). Once a minute on a clock (this module's
first policy) still landed in the measured window (+139 ms).

The stream relay (`proxy.stream_relay`) now parks a stream's task once per body, and an
event makes nothing that outlives it, so a held stream promotes nothing: an in-process
probe of 2,000 SSE streams saw two or three generation-0 collections (under 1 ms) and at
most one generation-1 one (3 ms) over a 5-10 s window, and no older one. What a full
collection can free is then what only it frees, reference cycles, and a closed HTTP/1.1
connection leaves none now: the session drops its fast path and the parsers drop llhttp
at close (`ResponseParser.close`; garbage after close, same probe: 30.7 -> 19.7 -> 0
objects a connection). What it costs is what is held open: 124-266 ms at 9,000 held
streams. The first version of this schedule (at least 2,000 closes and a quarter of those
open) ran it in the second where 9,000 streams end, stalling the last events of the
streams still open (bench/streams.py, 18:02Z: SSE p99 added +336 / +472 ms, one or two
full collections each run). So a full collection runs when

- `MAX_PERIOD_S` has passed since the last one (the control plane's own cycles, and
  whatever a path not measured here leaves: TLS, HTTP/2, errors): a proxy that holds
  streams pauses once per period, no more (the stall stays, its frequency goes from once
  a minute to once in ten), or
- at least `MIN_CLOSES` connections have closed since the last one and they are at least
  four times the connections open now: a safety net for cycles that closes still leave,
  taken only when the live set (the pause) is small beside them, so that a burst of
  streams ending does not pause the ones still open.

What exists once the process has started (modules, settings) is frozen out of every scan
(`gc.freeze`), and the automatic full collection is as good as off (a generation-2
threshold no run reaches). Young collections (generations 0 and 1) run as CPython runs
them. Collections slower than `SLOW_COLLECTION_S` (any generation) are logged, by the
policy's loop rather than inside the collector's callback.
"""

from __future__ import annotations

import gc
import logging
import time
from collections import deque
from typing import Final

import trio

from proxy import poller

log = logging.getLogger("proxy")

CHECK_S: Final = 1.0  # how often the policy looks
MIN_CLOSES: Final = 20_000  # closed connections since the last full collection, at least
MAX_PERIOD_S: Final = 600.0  # a full collection at least this often
_YOUNG: Final = (700, 10)  # CPython's own thresholds for generations 0 and 1
_FULL_NEVER: Final = 1_000_000  # generation-1 collections between automatic full ones
SLOW_COLLECTION_S: Final = 0.02  # a collection longer than this is logged

# (generation, seconds, objects freed) of each slow collection not logged yet.
_slow: deque[tuple[int, float, int]] = deque(maxlen=64)
_began = [0.0]


def _timed(phase: str, info: dict[str, int]) -> None:
    """gc.callbacks: note the slow collections (logged later: never log in here)."""
    if phase == "start":
        _began[0] = time.perf_counter()
        return
    took = time.perf_counter() - _began[0]
    if took > SLOW_COLLECTION_S:
        _slow.append((info["generation"], took, info["collected"]))


def configure() -> None:
    """Freeze what exists now and leave full collections to `collect_forever`."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*_YOUNG, _FULL_NEVER)
    if _timed not in gc.callbacks:
        gc.callbacks.append(_timed)


def due(closed: int, open_now: int, since_last: float) -> bool:
    """Whether a full collection is worth its pause now (see the module docstring)."""
    if since_last >= MAX_PERIOD_S:
        return True
    return closed >= MIN_CLOSES and closed >= 4 * open_now


async def collect_forever(check: float = CHECK_S) -> None:
    """Look every `check` seconds; a full collection when `due` (on the trio thread: it
    has to stop the world anyway); never returns."""
    last_at = trio.current_time()
    last_closes = poller.closes[0]
    while True:
        await trio.sleep(check)
        while _slow:
            generation, took, found = _slow.popleft()
            log.info(
                "garbage collection (generation %d): %.0f ms, %d objects freed",
                generation,
                took * 1000,
                found,
            )
        closes = poller.closes[0]
        open_now = poller.opens[0] - closes
        now = trio.current_time()
        if due(closes - last_closes, open_now, now - last_at):
            gc.collect()
            last_at, last_closes = trio.current_time(), poller.closes[0]
