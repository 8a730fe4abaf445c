"""Idle keep-alive connections to replicas, per upstream.

Invariants:
- A connection in the pool carries no request: it is put back only after a complete
  response on a connection the replica keeps alive, with no stray bytes after it.
- A pooled connection is watched while idle: the poller marks it `stale` as soon as the
  replica's FIN, reset or a stray byte is reported on it (as nginx does), and `take`
  closes the stale ones. Besides, `take` peeks (`recv(MSG_PEEK)`) at a connection before
  handing it out, unless it was pooled less than `TRUST_S` ago and the caller can retry
  the request on a fresh connection should the replica have closed it meanwhile (the
  stale-connection rule in `proxy.forward`).
- Connections of upstreams that left the set are closed when they come back (`put`) and
  at `retain`; the pool never holds more than `max_idle` per upstream.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Final

from proxy.sockets import Conn
from proxy.upstreams import Upstream

TRUST_S: Final = 1.0


class Pool:
    __slots__ = ("_idle", "_max_idle")

    def __init__(self, max_idle: int = 256) -> None:
        self._idle: dict[Upstream, list[Conn]] = {}
        self._max_idle = max_idle

    def take(self, upstream: Upstream, now: float, *, trust_recent: bool) -> Conn | None:
        """The most recently pooled connection that passes the check, or None.

        `trust_recent`: skip the peek (one syscall) for a connection pooled less than
        `TRUST_S` ago; the caller can retry on a fresh connection if it was stale.
        """
        conns = self._idle.get(upstream)
        while conns:
            conn = conns.pop()
            conn.pooled = False
            if conn.stale or conn.peer_closed:
                conn.close()
                continue
            if trust_recent and now - conn.pooled_at < TRUST_S:
                return conn
            if conn.is_idle_and_open():
                return conn
            conn.close()
        return None

    def put(self, upstream: Upstream, conn: Conn, now: float) -> None:
        conns = self._idle.get(upstream)
        if conns is None or len(conns) >= self._max_idle:
            conn.close()
        else:
            conn.pooled = True
            conn.pooled_at = now
            conns.append(conn)

    def retain(self, upstreams: Collection[Upstream]) -> None:
        """Pool connections for these upstreams from now on; close the others' idle ones."""
        for up in list(self._idle):
            if up not in upstreams:
                for conn in self._idle.pop(up):
                    conn.close()
        for up in upstreams:
            self._idle.setdefault(up, [])

    def close_all(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
            conns.clear()

    def __repr__(self) -> str:
        sizes = ", ".join(f"{u.replica_id}={len(c)}" for u, c in self._idle.items())
        return f"<Pool {sizes}>"
