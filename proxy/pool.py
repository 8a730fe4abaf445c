"""Idle keep-alive connections to replicas, per upstream.

Invariants:
- A connection in the pool carries no request: it is put back only after a complete
  response on a connection the replica keeps alive, with no stray bytes after it.
- `take` checks each candidate before handing it out (has the replica closed it or sent
  something?) and closes the ones that fail the check.
- Connections of upstreams that left the set are closed when they come back (`put`) and
  at `retain`; the pool never holds more than `max_idle` per upstream.
"""

from __future__ import annotations

from collections.abc import Collection

from proxy.sockets import Conn
from proxy.upstreams import Upstream


class Pool:
    __slots__ = ("_idle", "_max_idle")

    def __init__(self, max_idle: int = 256) -> None:
        self._idle: dict[Upstream, list[Conn]] = {}
        self._max_idle = max_idle

    def take(self, upstream: Upstream) -> Conn | None:
        conns = self._idle.get(upstream)
        while conns:
            conn = conns.pop()
            if conn.is_idle_and_open():
                return conn
            conn.close()
        return None

    def put(self, upstream: Upstream, conn: Conn) -> None:
        conns = self._idle.get(upstream)
        if conns is None or len(conns) >= self._max_idle:
            conn.close()
        else:
            conns.append(conn)

    def retain(self, upstreams: Collection[Upstream]) -> None:
        """Pool connections for these upstreams from now on; close the others' idle ones."""
        for up in list(self._idle):
            if up not in upstreams:
                for conn in self._idle.pop(up):
                    conn.close()
        for up in upstreams:
            self._idle.setdefault(up, [])

    def idle_count(self, upstream: Upstream) -> int:
        return len(self._idle.get(upstream, ()))

    def close_all(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
            conns.clear()

    def __repr__(self) -> str:
        sizes = ", ".join(f"{u.replica_id}={len(c)}" for u, c in self._idle.items())
        return f"<Pool {sizes}>"
