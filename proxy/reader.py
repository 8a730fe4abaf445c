"""The client's byte stream as a queue of protocol events (requests, body pieces, END)."""

from __future__ import annotations

from collections import deque

import trio

from proxy.protocol import END, Event, RequestHead, RequestParser
from proxy.sockets import Conn, Timeout


class ClientGone(Exception):
    """The client closed, reset or stopped reading."""


class ClientReader:
    """Feeds what the client sends to its `RequestParser`; hands out the events in order."""

    __slots__ = ("conn", "parser", "_events")

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.parser = RequestParser()
        self._events: deque[Event] = deque()

    def has_events(self) -> bool:
        return bool(self._events)

    def feed(self, data: bytes) -> None:
        self._events.extend(self.parser.feed(data))

    def whole_request(self) -> tuple[RequestHead, bytes | None] | None:
        """The events held, when they are exactly one request with all of its body (at most
        one piece: None when it has none): the fast path's case (`proxy.fastpath`)."""
        events = self._events
        n = len(events)
        if n == 2:
            head = events[0]
            if events[1] is END and type(head) is RequestHead:
                return head, None
        elif n == 3:
            head, body = events[0], events[1]
            if events[2] is END and type(head) is RequestHead and type(body) is bytes:
                return head, body
        return None

    def put_back(self, events: list[Event]) -> None:
        """Events taken out to be looked at, handed out again ahead of the rest (the model
        gateway reads a body whole to find its model, `proxy.gateway`)."""
        self._events.extendleft(reversed(events))

    def clear(self) -> None:
        self._events.clear()

    def pop_ready(self) -> Event | None:
        return self._events.popleft() if self._events else None

    async def rest_of_head(self, deadline: float) -> Event | None:
        """The next event once more bytes came, for a head under way: each read waits only
        what is left until `deadline` (trio time), then Timeout; None at end of stream."""
        conn, events = self.conn, self._events
        while not events:
            left = deadline - trio.current_time()
            if left <= 0:
                raise Timeout
            data = await conn.recv(left)
            if not data:
                return None
            events.extend(self.parser.feed(data))
        return events.popleft()

    async def next_event(self, timeout: float) -> Event:  # noqa: ASYNC109 - see proxy.sockets
        """The next event; raises ClientGone at EOF, ProtocolError, Timeout."""
        events = self._events
        while not events:
            try:
                data = await self.conn.recv(timeout)
            except OSError as exc:
                raise ClientGone from exc
            if not data:
                raise ClientGone
            events.extend(self.parser.feed(data))
        return events.popleft()
