"""The accept loop and the per-connection barrier that an endpoint and the gateway share.

`accept_under(gate, listener, handlers, serve)` accepts for as long as it runs, one
connection at a time while the gate has room (the rest wait in the kernel's backlog), counts
each as opened and starts `serve(sock, peer)` for it in `handlers`. `serve_guarded` is the
body of such a `serve`: it wraps the socket (`open_conn`), makes the connection's handler
(`make_handler`), keeps it in `live` while it serves (for the drain to reach it), and
whatever happens closes the connection and counts it closed: an error there (a bug, an
unforeseen `setsockopt` or parser failure) is logged and ends that connection only.
Cancellation is a BaseException and passes.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from typing import NoReturn, Protocol, TypeVar

import trio

from proxy import sockets
from proxy.admission import Gate

log = logging.getLogger("proxy")


class Closable(Protocol):
    def close(self) -> None: ...


class Handler(Protocol):
    async def serve(self) -> None: ...


C = TypeVar("C", bound=Closable)
H = TypeVar("H", bound=Handler)


async def accept_under(
    gate: Gate,
    listener: socket.socket,
    handlers: trio.Nursery,
    serve: Callable[[socket.socket, str], Awaitable[None]],
) -> NoReturn:
    while True:
        if not gate.has_room():
            await gate.wait_for_room()  # the rest wait in the backlog
        sock, peer = await sockets.accept(listener)
        gate.opened()
        handlers.start_soon(serve, sock, peer)


async def serve_guarded(
    sock: socket.socket,
    peer: str,
    *,
    open_conn: Callable[[socket.socket, str], C],
    make_handler: Callable[[C], H],
    live: set[H],
    gate: Gate,
    what: str,
) -> None:
    """One client connection, behind the barrier that keeps its faults its own; `what`
    names the listener in the log line ("endpoint NAME", "gateway")."""
    conn: C | None = None
    handler: H | None = None
    try:
        conn = open_conn(sock, peer)
        handler = make_handler(conn)
        live.add(handler)
        await handler.serve()
    except Exception:
        log.exception("%s: connection from %s failed; closed it", what, peer)
    finally:
        if handler is not None:
            live.discard(handler)
        if conn is not None:
            conn.close()
        else:
            sock.close()
        gate.closed()
