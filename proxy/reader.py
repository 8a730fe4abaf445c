"""The client's byte stream as a queue of protocol events (requests, body pieces, END)."""

from __future__ import annotations

from collections import deque

from proxy.protocol import Event, RequestParser
from proxy.sockets import Conn


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

    def pop_ready(self) -> Event | None:
        return self._events.popleft() if self._events else None

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
