"""Upstreams (replicas) and the per-request choice over the current set.

`RoundRobin.pick` takes them in turn; `RoundRobin.choose` is what admission uses: in turn
as well, or by least outstanding requests (the round robin's next and one other at random,
the one with fewer requests in flight, ties to the round robin's: "power of two choices"),
skipping replicas at their `max_concurrency` and, while others are left, ejected ones.

Invariants:
- `RoundRobin.set` replaces the whole set at once; the next `pick` sees only the new set.
- An upstream marked with `avoid(up, until)` is skipped until then, unless every upstream
  not excluded is avoided: a request is never refused for it. `set` forgets the marks of
  upstreams that left the set.
- Picking never blocks and never touches I/O; with no mark set it costs what it did before
  marks existed (one truthiness test).
"""

from __future__ import annotations

import random
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Upstream:
    """One replica, reachable at host:port (a 127.0.0.1 port published by Podman).

    Its hash is computed once: a request looks it up a few times (slots, pool, counters),
    and the dataclass's own hash is a Python function over the three fields each time.
    """

    replica_id: str
    host: str
    port: int
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.replica_id, self.host, self.port)))

    def __hash__(self) -> int:
        return self._hash


class RoundRobin:
    """Hands out upstreams in turn; `exclude` skips those a request already tried."""

    __slots__ = ("_items", "_next", "_avoid")

    def __init__(self, upstreams: Iterable[Upstream] = ()) -> None:
        self._items: tuple[Upstream, ...] = tuple(upstreams)
        self._next = 0
        self._avoid: dict[Upstream, float] = {}

    def set(self, upstreams: Iterable[Upstream]) -> None:
        # Deduplicate, keeping order: a replica listed twice must not get double weight.
        self._items = tuple(dict.fromkeys(upstreams))
        if self._avoid:
            kept = set(self._items)
            self._avoid = {u: t for u, t in self._avoid.items() if u in kept}

    @property
    def upstreams(self) -> tuple[Upstream, ...]:
        return self._items

    def __len__(self) -> int:
        return len(self._items)

    def avoid(self, upstream: Upstream, until: float) -> None:
        """Skip `upstream` until `until` (a trio clock time) while others are left."""
        if upstream in self._items:
            self._avoid[upstream] = max(until, self._avoid.get(upstream, until))

    def trust(self, upstream: Upstream) -> None:
        """Forget an `avoid` mark (the upstream has just connected after all)."""
        self._avoid.pop(upstream, None)

    def avoided(self, now: float) -> frozenset[Upstream]:
        return frozenset(u for u, t in self._avoid.items() if t > now)

    def pick(self, exclude: Container[Upstream] = (), now: float = 0.0) -> Upstream | None:
        items = self._items
        avoid = self._avoid
        fallback: Upstream | None = None
        n = len(items)
        for _ in range(n):
            i = self._next % n
            self._next = i + 1
            up = items[i]
            if up in exclude:
                continue
            if avoid:
                until = avoid.get(up)
                if until is not None:
                    if until > now:
                        if fallback is None:
                            fallback = up
                        continue
                    del avoid[up]
            return up
        return fallback

    def choose(
        self,
        exclude: Container[Upstream],
        now: float,
        taken: Mapping[Upstream, int],
        cap: int | None,
        least: bool,
        out: Container[Upstream] = (),
    ) -> Upstream | None:
        """The next upstream with room (fewer than `cap` of `taken`; None: no cap), not in
        `exclude`; one `out` (ejected) or avoided only when no other has room."""
        first, aside = self._next_with_room(exclude, now, taken, cap, out)
        if first is None or not (least or aside) or len(self._items) < 2:
            return first
        other = self._random_with_room(first, exclude, now, taken, cap, out)
        if other is not None and (aside or taken.get(other, 0) < taken.get(first, 0)):
            return other
        return first

    def _set_aside(self, up: Upstream, now: float, out: Container[Upstream]) -> bool:
        """Whether `up` is ejected or avoided now (dropping an avoid mark that has run out)."""
        if up in out:
            return True
        avoid = self._avoid
        if avoid:
            until = avoid.get(up)
            if until is not None:
                if until > now:
                    return True
                del avoid[up]
        return False

    def _next_with_room(
        self,
        exclude: Container[Upstream],
        now: float,
        taken: Mapping[Upstream, int],
        cap: int | None,
        out: Container[Upstream],
    ) -> tuple[Upstream | None, bool]:
        """The round robin's next usable upstream, and whether it is one set aside (the
        first such, returned only when every usable one is)."""
        items = self._items
        avoid = self._avoid
        fallback: Upstream | None = None
        n = len(items)
        for _ in range(n):  # checks inlined: this runs for every request
            i = self._next % n
            self._next = i + 1
            up = items[i]
            if up in exclude or (cap is not None and taken.get(up, 0) >= cap):
                continue
            if (out and up in out) or (avoid and self._set_aside(up, now, out)):
                if fallback is None:
                    fallback = up
                continue
            return up, False
        return fallback, fallback is not None

    def _random_with_room(
        self,
        first: Upstream,
        exclude: Container[Upstream],
        now: float,
        taken: Mapping[Upstream, int],
        cap: int | None,
        out: Container[Upstream],
    ) -> Upstream | None:
        """A usable upstream other than `first`, from a random place in the set on."""
        items = self._items
        avoid = self._avoid
        n = len(items)
        start = int(random.random() * n)  # noqa: S311 - load spreading, not security
        for k in range(n):
            up = items[(start + k) % n]
            if (
                up is not first
                and up not in exclude
                and (cap is None or taken.get(up, 0) < cap)
                and not (out and up in out)
                and not (avoid and self._set_aside(up, now, out))
            ):
                return up
        return None

    def __repr__(self) -> str:
        ids = ", ".join(u.replica_id for u in self._items)
        return f"<RoundRobin [{ids}] next={self._next} avoided={len(self._avoid)}>"
