"""The swap board: host-wide, where workers see each other for a swap and ask for one.

Theory of operation. One `SwapBoard` serves every deployment's worker (it sits in their
shared context). Each worker joins with a function that tells its `Tenant` view when asked
(its spec's swap inputs and its endpoint's live figures), so a woken worker judges the
others on what holds at that moment, never on a round-old copy. The choice itself is
`daemon.scaling.swap.choose_victims` (pure); the board turns the ledger's holdings and the
views into its candidates, and carries the asks:

- `evict` records, per victim, for whom it is asked to go, and nudges the victim's worker.
- The victim's worker acts in its next round, through its autoscaler (the count set to zero,
  as its idle scale-down does), after checking again that nothing is in flight or queued;
  it says `acted` or, when a request came meanwhile, `declined` (the woken one chooses
  again). An ask older than `ASK_TIMEOUT` is void.
- The woken worker waits until the victims' holdings are gone from the ledger (their
  containers removed), then `finish`es the asks and creates at once.

Nothing here blocks or does I/O; `now` is trio's, passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from daemon.gpu.ledger import deployment_of
from daemon.gpu.placement import Assignment
from daemon.scaling.idle import Activity
from daemon.scaling.swap import Candidate

ASK_TIMEOUT = 120.0  # seconds a victim's worker has to act on an ask before it is void


@dataclass(frozen=True)
class Tenant:
    """A worker's own view for the swap, read when a woken worker asks."""

    min_replicas: int
    autoscaled: bool  # the autoscaler sets the count (not pinned, not fixed)
    target: int | None  # the autoscaler's count now (0: going to zero); None: not its own
    priority: int
    group: str | None
    min_idle: float
    activity: Activity
    idle_for: float


@dataclass
class Ask:
    victim: str
    for_whom: str
    at: float
    state: str = "asked"  # "asked", "acted", "declined"


@dataclass(frozen=True)
class SwapRecord:
    """The last swap, for `berth gateway` and the metrics."""

    victims: tuple[str, ...]
    for_whom: str
    reason: str
    at: float  # trio time


class SwapBoard:
    def __init__(self) -> None:
        self._views: dict[str, Callable[[], Tenant | None]] = {}
        self._nudges: dict[str, Callable[[], None]] = {}
        self._asks: dict[str, Ask] = {}  # victim -> its ask
        self.last_swap: SwapRecord | None = None
        self.swaps_total = 0

    def __repr__(self) -> str:
        return f"<SwapBoard {len(self._views)} workers, asks {sorted(self._asks)}>"

    def join(self, name: str, view: Callable[[], Tenant | None], nudge: Callable[[], None]) -> None:
        self._views[name] = view
        self._nudges[name] = nudge

    def leave(self, name: str, view: Callable[[], Tenant | None]) -> None:
        if self._views.get(name) is view:  # a newer worker of the same name keeps its place
            del self._views[name]
            del self._nudges[name]

    def candidates(self, holdings: Mapping[str, Assignment], now: float) -> list[Candidate]:
        """Every other deployment that holds GPUs, as the swap judges them now."""
        held: dict[str, list[Assignment]] = {}
        for key, assignment in holdings.items():
            held.setdefault(deployment_of(key), []).append(assignment)
        out = []
        for name, assignments in sorted(held.items()):
            view = self._views.get(name)
            tenant = view() if view is not None else None
            if tenant is None:  # no worker that runs it: nothing can scale it to zero
                out.append(Candidate(name, tuple(assignments), autoscaled=False))
                continue
            out.append(
                Candidate(
                    deployment=name,
                    holds=tuple(assignments),
                    min_replicas=tenant.min_replicas,
                    autoscaled=tenant.autoscaled,
                    priority=tenant.priority,
                    group=tenant.group,
                    min_idle=tenant.min_idle,
                    in_flight=tenant.activity.in_flight,
                    waiting=tenant.activity.waiting,
                    idle_for=tenant.idle_for,
                    leaving=tenant.target == 0 or self.asked(name, now) is not None,
                )
            )
        return out

    def evict(self, victims: Iterable[str], for_whom: str, reason: str, now: float) -> None:
        names = tuple(victims)
        for victim in names:
            self._asks[victim] = Ask(victim, for_whom, now)
            nudge = self._nudges.get(victim)
            if nudge is not None:
                nudge()
        self.last_swap = SwapRecord(names, for_whom, reason, now)
        self.swaps_total += 1

    def asked(self, victim: str, now: float) -> Ask | None:
        """The ask for `victim` to go that is still to be acted on, if any."""
        ask = self._asks.get(victim)
        if ask is None or ask.state != "asked" or now - ask.at > ASK_TIMEOUT:
            return None
        return ask

    def answer(self, victim: str, *, acted: bool) -> None:
        ask = self._asks.get(victim)
        if ask is not None:
            ask.state = "acted" if acted else "declined"
            nudge = self._nudges.get(ask.for_whom)
            if nudge is not None:
                nudge()

    def state(self, victim: str, for_whom: str) -> str | None:
        """What became of the ask for `victim` made for `for_whom` (None: no such ask)."""
        ask = self._asks.get(victim)
        return ask.state if ask is not None and ask.for_whom == for_whom else None

    def finish(self, victims: Iterable[str], for_whom: str) -> None:
        for victim in victims:
            if self.state(victim, for_whom) is not None:
                del self._asks[victim]

    def nudge(self, name: str) -> None:
        nudge = self._nudges.get(name)
        if nudge is not None:
            nudge()
