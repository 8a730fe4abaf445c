"""Upstreams (replicas) and the per-request round robin over the current set.

Invariant: `RoundRobin.set` replaces the whole set at once; the next `pick` sees only the
new set. Picking never blocks and never touches I/O.
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

    __slots__ = ("_items", "_next")

    def __init__(self, upstreams: Iterable[Upstream] = ()) -> None:
        self._items: tuple[Upstream, ...] = tuple(upstreams)
        self._next = 0

    def set(self, upstreams: Iterable[Upstream]) -> None:
        # Deduplicate, keeping order: a replica listed twice must not get double weight.
        self._items = tuple(dict.fromkeys(upstreams))

    @property
    def upstreams(self) -> tuple[Upstream, ...]:
        return self._items

    def __len__(self) -> int:
        return len(self._items)

    def pick(self, exclude: Container[Upstream] = ()) -> Upstream | None:
        items = self._items
        n = len(items)
        for _ in range(n):
            i = self._next % n
            self._next = i + 1
            up = items[i]
            if up not in exclude:
                return up
        return None

    def __repr__(self) -> str:
        ids = ", ".join(u.replica_id for u in self._items)
        return f"<RoundRobin [{ids}] next={self._next}>"
