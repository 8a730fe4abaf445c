"""The lingering close (nginx's): how a connection ends after an answer that closes it.

Closing a socket with unread bytes in its receive buffer makes the kernel send a reset,
which can destroy the answer (or GOAWAY) before the client read it. So: half-close, then
read away what the client still sends, bounded in time and bytes, and only then close.
"""

from __future__ import annotations

from typing import Final

import trio

from proxy.sockets import Conn, Timeout

LINGER_S: Final = 2.0
LINGER_BYTES: Final = 1024 * 1024


async def linger(conn: Conn) -> None:
    """Half-close `conn`, then read away at most `LINGER_BYTES` for at most `LINGER_S`;
    never raises for the connection's own errors (the caller closes it next)."""
    try:
        conn.shutdown_write()
        end = trio.current_time() + LINGER_S
        got = 0
        while got < LINGER_BYTES:
            left = end - trio.current_time()
            if left <= 0:
                return
            data = await conn.recv(left)
            if not data:
                return
            got += len(data)
    except (OSError, Timeout, trio.ClosedResourceError):
        return
