"""A tunnel after `101 Switching Protocols` (WebSocket): bytes copied both ways.

Invariants:
- It ends when both sides have closed (each end-of-stream is passed on as a half-close),
  when either side fails (both are then reset), or when no byte has moved in either
  direction for `idle_timeout` seconds (the endpoint's read-idle timeout); a one-way
  stream (a server pushing to a silent client) counts as activity for both directions.
- The timeout is enforced by the sockets' watchdog: no cancel scope per read.
"""

from __future__ import annotations

import trio

from proxy.sockets import Conn, Timeout


async def tunnel(
    client: Conn,
    upstream: Conn,
    from_client: bytes,
    from_upstream: bytes,
    idle_timeout: float,
) -> None:
    """Copy until both sides close, either fails, or the tunnel idles out."""
    last_activity = trio.current_time()

    async def copy(src: Conn, dst: Conn, first: bytes) -> None:
        nonlocal last_activity
        try:
            if first:
                await dst.send_all(first, idle_timeout)
            while True:
                try:
                    data = await src.recv_wait_first(idle_timeout)
                except Timeout:
                    if trio.current_time() - last_activity < idle_timeout:
                        continue  # the other direction is busy: not idle
                    raise
                if not data:
                    break
                last_activity = trio.current_time()
                await dst.send_all(data, idle_timeout)
            dst.shutdown_write()
        except (OSError, Timeout, trio.ClosedResourceError):
            src.abort()
            dst.abort()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(copy, client, upstream, from_client)
        nursery.start_soon(copy, upstream, client, from_upstream)
