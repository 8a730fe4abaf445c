"""One exchange (a request and its response) as explicit state: what `forward` and `relay`
share, and how one attempt at one upstream can end.

`forward` starts each request on a client connection by resetting the connection's
`Exchange`; `relay` records on it what the response says (`status`, `close_after`,
`reusable`) and returns an `Outcome`; `forward` applies the retry rule to the outcome.

Invariants:
- Every outcome of an attempt is a member of `Outcome`, declared here and nowhere else.
- `status` is the status of the response being sent (0 before one is known); a status
  recorded but never sent is `CLIENT_CLOSED`.
- Once `close_after` is set during an exchange it stays set: the client connection ends
  after this response.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from proxy.balancer import Balancer
from proxy.reader import ClientReader
from proxy.sockets import Conn


class Outcome(StrEnum):
    """How one attempt at one upstream ended (see the retry rule in `proxy.forward`)."""

    # The response was relayed completely.
    DONE = "done"
    # No whole response head arrived before end-of-stream or a reset; nothing reached the
    # client.
    RETRY = "retry"
    # Failed before anything reached the client, which gets `Exchange.status` as answer.
    FAILED = "failed"
    # Failed after bytes reached the client, or the client went away.
    CUT = "cut"
    # As RETRY, and the replica's socket was closed before the request came.
    STALE = "stale"
    # The send failed at once: the replica never got the request.
    NOT_SENT = "not sent"


# The members as module constants, for the hot path: on Python 3.11 `Outcome.DONE` costs
# ~80 ns (an enum descriptor), a global ~7 ns, and an exchange compares a few of them.
DONE: Final = Outcome.DONE
RETRY: Final = Outcome.RETRY
FAILED: Final = Outcome.FAILED
CUT: Final = Outcome.CUT
STALE: Final = Outcome.STALE
NOT_SENT: Final = Outcome.NOT_SENT

CLIENT_CLOSED: Final = 499  # recorded (never sent) when the client left first (nginx's code)


class Exchange:
    """A client connection's current exchange: who takes part, and what is known so far.

    One per client connection, reset by `forward` for each request, so that serving a
    request allocates nothing for it.
    """

    __slots__ = ("balancer", "client", "reader", "status", "close_after", "reusable")

    def __init__(self, balancer: Balancer, client: Conn, reader: ClientReader) -> None:
        self.balancer = balancer  # the endpoint's shared state: timeouts, draining
        self.client = client
        self.reader = reader  # the client's requests and request body, as events
        self.status = 0  # the status of the response being sent
        self.close_after = False  # the client connection ends after this response
        self.reusable = False  # the replica's connection may carry another request

    def __repr__(self) -> str:
        return (
            f"<Exchange {self.client.peer} status={self.status} "
            f"close_after={self.close_after} reusable={self.reusable}>"
        )
