"""How many client connections an endpoint may hold open, and the budget all endpoints share.

berthd's descriptors are one pool: its SQLite database and WAL, the Podman API
connections, health probes, log streams and metrics scrapes draw on the same
RLIMIT_NOFILE as every endpoint's client and replica connections. An endpoint flooded
with connections must not starve those, so the endpoints together get a budget sized
from the soft limit with a reserve kept back for the control plane:

    reserve = max(CONTROL_PLANE_RESERVE, min(limit // 8, CONTROL_PLANE_RESERVE_MAX))
    budget  = max(MIN_BUDGET, (limit - reserve) // 2)

halved because each proxied client connection may hold a replica connection as well
(idle pooled replica connections come out of the reserve's slack). Under berthd's
systemd unit (LimitNOFILE=65536): reserve 1,024, budget 32,256 client connections; at
these machines' hard limit of 20,000: reserve 1,024, budget 9,488 (9,000 long streams fit);
at the common shell default of 1,024: reserve 256, budget 384. The reserve stops growing at
1,024: the control plane's descriptors grow with the replicas (a probe, a scrape, a log
stream each), not with the limit, and 1,024 covers hundreds of replicas.

Over a cap (the endpoint's own `max_connections`, or the shared budget) an endpoint stops
accepting: new connections wait in the kernel's listen backlog (1,024 long) until one
closes, as nginx does at `worker_connections`, and are served then, in order; the
connections already open are not touched. A fast 503 was the alternative, and was not
chosen: answering costs an accept, a descriptor and a write per refused connection at
the moment descriptors are scarcest (when the limit is the fd limit, accept itself
fails); a slowloris flood that holds the cap would turn every honest client away with a
503 instead of having it wait a `header_read` (the most any slow connection holds a
slot) in the backlog; and a client kept in the backlog needs no retry logic.

Invariants:
- `Gate.wait_for_room` returns only while the endpoint and the budget are both under
  their caps; `opened` and `closed` are called exactly once per accepted connection.
- Every `closed` wakes the accept loops waiting on the budget (one per endpoint at
  most), so a slot freed by one endpoint is found by another.
- With room to spare, admission costs two comparisons per connection and no wait.
"""

from __future__ import annotations

import resource
from typing import Final

from trio.lowlevel import ParkingLot

CONTROL_PLANE_RESERVE: Final = 256
CONTROL_PLANE_RESERVE_MAX: Final = 1024
MIN_BUDGET: Final = 16
_UNLIMITED: Final = 1 << 20  # what an RLIM_INFINITY soft limit is taken as


def fd_limit() -> int:
    """berthd's soft RLIMIT_NOFILE (what `open`, `accept` and `socket` fail beyond)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return _UNLIMITED if soft == resource.RLIM_INFINITY or soft > _UNLIMITED else int(soft)


def control_plane_reserve(limit: int) -> int:
    return max(CONTROL_PLANE_RESERVE, min(limit // 8, CONTROL_PLANE_RESERVE_MAX))


def default_budget(limit: int | None = None) -> int:
    """Client connections all endpoints together may hold (see the module docstring)."""
    limit = fd_limit() if limit is None else limit
    return max(MIN_BUDGET, (limit - control_plane_reserve(limit)) // 2)


class ConnectionBudget:
    """Open client connections across endpoints, against `cap`."""

    __slots__ = ("cap", "open", "_lot")

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError(f"cap must be >= 1, got {cap}")
        self.cap = cap
        self.open = 0
        self._lot = ParkingLot()  # accept loops waiting for a slot

    def __repr__(self) -> str:
        return f"<ConnectionBudget {self.open}/{self.cap} waiting={len(self._lot)}>"


_process_budget: ConnectionBudget | None = None


def process_budget() -> ConnectionBudget:
    """The budget every endpoint of this process shares unless given its own."""
    global _process_budget
    if _process_budget is None:
        _process_budget = ConnectionBudget(default_budget())
    return _process_budget


class Gate:
    """One endpoint's admission: its own cap (None: the budget's) within the budget."""

    __slots__ = ("budget", "max_connections", "open", "_lot")

    def __init__(self, budget: ConnectionBudget, max_connections: int | None = None) -> None:
        self.budget = budget
        self.max_connections = max_connections
        self.open = 0
        self._lot = ParkingLot()

    def has_room(self) -> bool:
        cap = self.max_connections
        return (cap is None or self.open < cap) and self.budget.open < self.budget.cap

    async def wait_for_room(self) -> None:
        """Until another connection may be accepted (at once when there is room)."""
        while not self.has_room():
            if self.max_connections is not None and self.open >= self.max_connections:
                await self._lot.park()
            else:
                await self.budget._lot.park()

    def set_max_connections(self, max_connections: int | None) -> None:
        self.max_connections = max_connections
        self._lot.unpark_all()

    def opened(self) -> None:
        self.open += 1
        self.budget.open += 1

    def closed(self) -> None:
        self.open -= 1
        self.budget.open -= 1
        if self._lot:
            self._lot.unpark()
        if self.budget._lot:
            self.budget._lot.unpark_all()

    def __repr__(self) -> str:
        cap = "budget" if self.max_connections is None else self.max_connections
        return f"<Gate {self.open}/{cap} {self.budget!r}>"
