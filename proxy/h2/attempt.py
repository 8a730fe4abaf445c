"""One HTTP/2 (or h2c-bound) request's way to a replica: the pick and the counting.

The one place of this package that speaks the balancer's admission API, so that a change
of that API is a change here only. Each request is balanced on its own (per stream, not
per connection): `acquire` takes a slot on the next upstream not tried yet (waiting in
the endpoint's admission queue while none has room, `proxy.queue`), `release` ends one
attempt on it (and reports its result for passive health), `finish` records the request once
with the status that went to the client.

Also here: `set_upstream_protocol`, which sets `Balancer.upstream_h2c` (read per request
by `proxy.forward` and `serve_h2`); the gRPC status counts are the Balancer's
(`grpc_status`).
"""

from __future__ import annotations

from typing import Final, Literal

import trio

from proxy.balancer import Balancer
from proxy.exchange import CLIENT_CLOSED
from proxy.h2.grpc_status import GrpcStatusCounts
from proxy.queue import Refusal
from proxy.upstreams import Upstream

UpstreamProtocol = Literal["http1", "h2c"]
UPSTREAM_PROTOCOLS: Final = ("http1", "h2c")


def set_upstream_protocol(balancer: Balancer, protocol: str) -> None:
    """`[endpoint] upstream_protocol`: how the replicas are spoken to from the next request."""
    if protocol in UPSTREAM_PROTOCOLS:
        balancer.upstream_h2c = protocol == "h2c"
    else:
        raise ValueError(f"upstream_protocol must be one of {UPSTREAM_PROTOCOLS}, got {protocol!r}")


def grpc_counts(balancer: Balancer) -> GrpcStatusCounts:
    """The endpoint's gRPC status counts (for the statistics): `Balancer.grpc_status`."""
    return balancer.grpc_status


class Refused:
    """No replica for the request: answer `status` with `message`."""

    __slots__ = ("status", "message", "retry_after")

    def __init__(self, status: int, message: str, retry_after: int | None = 1) -> None:
        self.status = status
        self.message = message
        self.retry_after = retry_after


class Attempt:
    """One request's picks and counts (see the module docstring)."""

    __slots__ = ("balancer", "tried", "start", "upstream", "_held", "_finished")

    def __init__(self, balancer: Balancer) -> None:
        self.balancer = balancer
        self.tried: list[Upstream] = []
        self.start = trio.current_time()
        self.upstream: Upstream | None = None  # the last one that got the request
        self._held: Upstream | None = None  # the upstream an attempt runs on now
        self._finished = False
        balancer.began()

    async def acquire(self) -> Upstream | Refused:
        """A slot on the next upstream not tried (waiting in the endpoint's queue when
        none has room), its attempt counted as begun; or why there is none."""
        b = self.balancer
        result = await b.acquire(self.tried)
        if result is None:
            return Refused(502, "no replica answered: each one tried failed", None)
        if isinstance(result, Refusal):
            return Refused(result.status, result.message, result.retry_after)
        self.tried.append(result)
        self.upstream = self._held = result
        b.started(result)
        return result

    def release(self, status: int, *, failed: bool = False) -> None:
        """The attempt on the held upstream ended: its slot goes back, with what it
        answered (`status`, 0 unknown) or whether it failed, for passive health."""
        up, self._held = self._held, None
        if up is not None:
            b = self.balancer
            b.stopped(up)
            if status == CLIENT_CLOSED:
                status, failed = 0, False  # the client left: says nothing of the replica
            b.release(up, status, failed)

    def switch(self, upstream: Upstream) -> None:
        """A raced connect (`proxy.connector`) won on another upstream, which holds a slot
        of its own (and is in `tried` already): the attempt moves to it."""
        b = self.balancer
        old, self._held = self._held, upstream
        if old is not None:
            b.stopped(old)
            b.release(old)
        self.upstream = upstream
        b.started(upstream)

    def connect_failed(self, upstream: Upstream) -> None:
        """A connect to `upstream` failed: the next `acquire` goes elsewhere."""
        if upstream not in self.tried:
            self.tried.append(upstream)
        self.balancer.suspect(upstream)

    def finish(self, status: int) -> None:
        """Record the request once, with the status the client got."""
        if self._finished:
            return
        self._finished = True
        if self._held is not None:
            self.release(status)
        self.balancer.finished(self.upstream, status, self.start)
