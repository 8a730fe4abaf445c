"""Connecting to a replica, hedged: a connect that hangs does not stall the request.

A loopback connect completes in well under a millisecond. One still pending after
`HEDGE_S` almost always belongs to a replica that is gone: right after `podman kill` its
published port swallows SYNs for a few hundred milliseconds before refusing them. The
request then races a connect to the next upstream as well (and another every `HEDGE_S`
while none has connected), takes whichever connects first and closes the others.

Invariants:
- While an untried upstream is left, no request waits longer than about `HEDGE_S` on
  connects that have not completed.
- An upstream whose connect failed, or was still pending at `HEDGE_S`, is skipped by the
  round robin for `AVOID_S` (unless nothing else is left), so the next requests do not wait
  on it again; a failure also marks it suspect, for the daemon's health checks to confirm.
- Every socket opened here is handed to the caller or closed before `open_connection`
  returns, cancelled or not; so is every admission slot (`proxy.queue`) taken for an
  upstream raced in: the winner's goes to the caller (who holds `first`'s), the others'
  are given back.
- The common case, a connect that completes at once, costs one cancel scope and nothing
  else (no task, no nursery).
"""

from __future__ import annotations

from typing import Final

import trio

from proxy.balancer import Balancer
from proxy.sockets import Conn, Timeout, finish_connect, start_connect
from proxy.upstreams import Upstream

HEDGE_S: Final = 0.15
AVOID_S: Final = 1.0


async def open_connection(
    b: Balancer, first: Upstream, tried: list[Upstream]
) -> tuple[Upstream, Conn] | None:
    """A new connection to `first`, or to an upstream raced in while `first` hangs.

    Upstreams raced in are appended to `tried`. None when every connect tried failed (the
    caller goes on to the next upstream, if any).
    """
    try:
        conn, done = await start_connect(first.host, first.port, b.poller)
    except OSError:
        _connect_failed(b, first)
        return None
    if done:
        return first, conn
    owned = True
    try:
        with trio.move_on_after(HEDGE_S):
            await finish_connect(conn, b.timeouts.connect)
            owned = False
            return first, conn
        b.upstreams.avoid(first, trio.current_time() + AVOID_S)
        owned = False  # the race owns it now
        return await _race(b, first, conn, tried)
    except (OSError, Timeout):
        _connect_failed(b, first)
        return None
    finally:
        if owned:
            conn.close()


async def _race(
    b: Balancer, first: Upstream, pending: Conn, tried: list[Upstream]
) -> tuple[Upstream, Conn] | None:
    """Wait for `pending` while connecting to further upstreams; the first to connect wins."""
    winner: tuple[Upstream, Conn] | None = None
    timeout = b.timeouts.connect
    racing: set[Upstream] = set()
    changed = trio.Event()

    async def finish(up: Upstream, conn: Conn | None, limit: float) -> None:
        nonlocal winner
        racing.add(up)
        won = False
        try:
            if conn is None:
                conn, done = await start_connect(up.host, up.port, b.poller)
                if not done:
                    await finish_connect(conn, limit)
            else:
                await finish_connect(conn, limit, check=True)
            if winner is None:
                winner = (up, conn)
                won = True
                b.upstreams.trust(up)
                nursery.cancel_scope.cancel()
        except (OSError, Timeout):
            _connect_failed(b, up)
        finally:
            racing.discard(up)
            if up is not first and not won:
                b.release(up)  # its slot, taken to race it
            if conn is not None and (winner is None or winner[1] is not conn):
                conn.close()
            changed.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(finish, first, pending, max(timeout - HEDGE_S, HEDGE_S))
        while True:
            up = b.try_take(tried)
            if up is None:
                break  # nothing left to try: wait for the connects under way
            tried.append(up)
            nursery.start_soon(finish, up, None, timeout)
            # Another upstream after HEDGE_S, or at once when one failed meanwhile.
            with trio.move_on_after(HEDGE_S):
                await changed.wait()
            changed = trio.Event()
            now = trio.current_time()
            for slow in racing:
                b.upstreams.avoid(slow, now + AVOID_S)
    return winner


def _connect_failed(b: Balancer, upstream: Upstream) -> None:
    """Suspect, and skipped by the round robin for `AVOID_S`."""
    b.upstreams.avoid(upstream, trio.current_time() + AVOID_S)
    b.suspect(upstream)
