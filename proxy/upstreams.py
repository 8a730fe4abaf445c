"""Upstreams (replicas) and the per-request round robin over the current set.

Invariants:
- `RoundRobin.set` replaces the whole set at once; the next `pick` sees only the new set.
- An upstream marked with `avoid(up, until)` is skipped until then, unless every upstream
  not excluded is avoided: a request is never refused for it. `set` forgets the marks of
  upstreams that left the set.
- Picking never blocks and never touches I/O; with no mark set it costs what it did before
  marks existed (one truthiness test).
"""

from __future__ import annotations

from collections.abc import Container, Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Upstream:
    """One replica, reachable at host:port (a 127.0.0.1 port published by Podman)."""

    replica_id: str
    host: str
    port: int


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

    def __repr__(self) -> str:
        ids = ", ".join(u.replica_id for u in self._items)
        return f"<RoundRobin [{ids}] next={self._next} avoided={len(self._avoid)}>"
