"""One client connection of the gateway: read each request, route it by its model, hand it
to the deployment's endpoint.

The flow of one request:
1. Its head arrives within `header_read` (from accept, or from its first byte on a
   kept-alive connection), parsed by the proxy's protocol core (`proxy.reader`); a
   malformed one is answered (400/405/431/501/505) and the connection closes.
2. The gateway's credentials judge it (`proxy.auth`, before anything else): 401.
3. `GET /v1/models` (and `/v1/models/ID`) is answered here. A POST under `/v1/` has its
   body read whole, up to `max_body` (413 over it, from Content-Length before a byte of
   body is read), at the endpoint timeouts' body pace (408); `100-continue` is answered
   here, since the body is needed before a deployment is chosen. Its `model`
   (`proxy.gateway.model_field`) picks the route: 400 without one, 404 with close names
   for an unknown one. Other paths: 404, or 405 for a known path and a wrong method.
4. The body (rewritten when the route says so, Content-Length fixed) is put back into the
   reader, and the request goes to the route's endpoint as one of its own
   (`Endpoint.session_on`, `Session.forward`): its balancing, admission queue,
   scale-from-zero hold (counted by its `waiting()`), retries, passive health and
   statistics, and its relay streams the response (SSE too) as it arrives.

Invariants:
- While the endpoint serves the request, the connection is watched by that endpoint's
  poller (`Conn.move_to`): a client that hangs up while it is queued or while a replica
  works is seen at once (the queue is left, the replica's connection cut); the
  connection comes back to the gateway's poller before the next request is read.
- The gateway's own answers are OpenAI's error shape (`proxy.gateway.errors`); an answer
  that ends the connection is followed by a bounded lingering close.
- Every wait is bounded: `header_read`, `client_idle`, the body pace.
"""

from __future__ import annotations

import json
import socket
import ssl
import urllib.parse
from collections.abc import Callable
from typing import Final

import trio

from proxy.auth import discard_body
from proxy.forward import Session
from proxy.gateway import errors
from proxy.gateway.model_field import Found, find_model, rewrite
from proxy.gateway.routes import Route
from proxy.gateway.state import GatewayState
from proxy.linger import linger
from proxy.poller import Poller
from proxy.protocol import END, Framing, ProtocolError, RequestHead
from proxy.reader import ClientGone, ClientReader
from proxy.relay import BodyPace, BodyTooSlow, next_body_event
from proxy.sockets import Conn, Timeout
from proxy.tls import TlsConn

MODELS: Final = b"/v1/models"
V1: Final = b"/v1/"
# Paths of OpenAI's POST routes: another method there is a 405, not a 404.
POST_PATHS: Final = frozenset(
    {
        b"/v1/chat/completions",
        b"/v1/completions",
        b"/v1/embeddings",
        b"/v1/responses",
        b"/v1/moderations",
        b"/v1/rerank",
    }
)
POST_PREFIXES: Final = (b"/v1/audio/", b"/v1/images/")
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


class TimedConn(Conn):
    """A plain client connection that notes when its first response byte went out."""

    __slots__ = ("first_byte_at",)

    def __init__(self, sock: socket.socket, peer: str, poller: Poller) -> None:
        super().__init__(sock, peer, poller)
        self.first_byte_at: float | None = None

    def send_now(self, data: bytes) -> int:
        if self.first_byte_at is None:
            self.first_byte_at = trio.current_time()
        return Conn.send_now(self, data)

    async def send_all(self, data: bytes, timeout: float) -> None:  # noqa: ASYNC109
        if self.first_byte_at is None:
            self.first_byte_at = trio.current_time()
        await Conn.send_all(self, data, timeout)


class TimedTlsConn(TlsConn):
    """As `TimedConn`, over TLS (whose sends are `send_all` alone)."""

    __slots__ = ("first_byte_at",)

    def __init__(
        self, sock: socket.socket, peer: str, poller: Poller, context: ssl.SSLContext
    ) -> None:
        super().__init__(sock, peer, poller, context)
        self.first_byte_at: float | None = None

    async def send_all(self, data: bytes, timeout: float) -> None:  # noqa: ASYNC109
        if self.first_byte_at is None:
            self.first_byte_at = trio.current_time()
        await TlsConn.send_all(self, data, timeout)


ClientConn = TimedConn | TimedTlsConn


class GatewayConnection:
    """Serves one client connection until it closes, errs or the gateway drains."""

    __slots__ = ("state", "conn", "reader", "idle", "answered", "linger", "session")

    def __init__(self, state: GatewayState, conn: ClientConn) -> None:
        self.state = state
        self.conn = conn
        self.reader = ClientReader(conn)
        self.idle = True  # between requests, no byte of the next one read yet
        self.answered = False  # a response was sent on it (a drain closes it when idle)
        self.linger = False  # an answer that closes the connection was sent
        self.session: Session | None = None  # the endpoint's, while it serves a request

    async def serve(self) -> None:
        state, conn, reader = self.state, self.conn, self.reader
        deadline = trio.current_time() + state.timeouts.header_read
        first = True
        try:
            while first or not state.draining:
                self.idle = True
                timeouts = state.timeouts
                try:
                    if not reader.has_events():
                        wait = deadline - trio.current_time() if first else timeouts.client_idle
                        data = await conn.recv_wait_first(wait if wait > 0 else 0.0)
                        if not data:
                            return
                        if not first:
                            deadline = trio.current_time() + timeouts.header_read
                        reader.feed(data)
                    elif not first:
                        deadline = trio.current_time() + timeouts.header_read
                    first = False
                    self.idle = False
                    event = reader.pop_ready()
                    if event is None:
                        event = await reader.rest_of_head(deadline)
                        if event is None:
                            return
                except ProtocolError as exc:
                    await self._send(errors.failed(exc.status, exc.reason), close=True)
                    return
                except (ClientGone, OSError, trio.ClosedResourceError):
                    return
                except Timeout:
                    if not self.idle:
                        await self._send(errors.failed(408, "request header timeout"), close=True)
                    return
                if not isinstance(event, RequestHead):  # pragma: no cover - parser invariant
                    return
                if not await self._request(event):
                    return
        finally:
            try:
                if self.linger and not conn.closed:
                    await linger(conn)
            finally:
                conn.close()

    async def _send(self, answer: bytes, *, close: bool) -> bool:
        """Send one of the gateway's own answers; True when the connection goes on."""
        self.answered = True
        status = int(answer[9:12])
        if status >= 400:
            refused = self.state.refused
            refused[status] = refused.get(status, 0) + 1
        try:
            await self.conn.send_all(answer, self.state.timeouts.client_idle)
        except (OSError, Timeout, trio.ClosedResourceError):
            return False
        if close:
            self.linger = True
            return False
        return True

    async def _answer_after_body(self, head: RequestHead, answer: Callable[[bool], bytes]) -> bool:
        """An answer to a request whose body is still unread: read it away (bounded) to keep
        the connection, else answer with Connection: close (`answer(close)` makes it)."""
        keep = head.keep_alive and await discard_body(
            self.reader, head, self.state.timeouts.header_read
        )
        return await self._send(answer(not keep), close=not keep)

    async def _request(self, head: RequestHead) -> bool:
        """Serve one request; True when the connection may carry another."""
        state = self.state
        if state.draining:
            head.keep_alive = False  # its answer says Connection: close
        guard = state.guard
        if guard is not None and (refused := await guard.admit(head)) is not None:
            keep = head.keep_alive and head.upgrade is None
            keep = keep and await discard_body(self.reader, head, state.timeouts.header_read)
            answer = errors.unauthorized(
                head, guard.credentials, presented=refused.presented, close=not keep
            )
            return await self._send(answer, close=not keep)
        method = head.method
        path = head.target.partition(b"?")[0]
        if head.upgrade is not None:  # the parser stops after it: nothing more to read
            return await self._send(
                errors.failed(501, "the gateway tunnels no upgrade"), close=True
            )
        if path == MODELS or path.startswith(MODELS + b"/"):
            if method != b"GET":
                return await self._answer_after_body(
                    head, lambda close: errors.method_not_allowed(method, path, b"GET", close=close)
                )
            return await self._answer_after_body(head, lambda close: self._models(path, close))
        if path.startswith(V1):
            if method == b"POST":
                return await self._route(head)
            if path in POST_PATHS or path.startswith(POST_PREFIXES):
                return await self._answer_after_body(
                    head,
                    lambda close: errors.method_not_allowed(method, path, b"POST", close=close),
                )
        return await self._answer_after_body(
            head, lambda close: errors.unknown_url(method, path, close=close)
        )

    def _models(self, path: bytes, close: bool) -> bytes:
        """GET /v1/models, or /v1/models/ID (OpenAI's retrieve)."""
        state = self.state
        table = state.table
        if path == MODELS:
            body = table.listing(state.is_loaded)
        else:
            model = urllib.parse.unquote(path[len(MODELS) + 1 :].decode("latin-1"))
            if table.get(model) is None:
                return errors.model_not_found(model, table.close_names(model), close=close)
            body = json.dumps(table.model_object(model, state.is_loaded)).encode() + b"\n"
        lines = b"Connection: close\r\n" if close else b""
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
            % (len(body), lines)
            + body
        )

    async def _route(self, head: RequestHead) -> bool:
        """A POST under /v1/: its body read whole, its model found, sent to its route."""
        state = self.state
        max_body = state.max_body
        if head.content_length is not None and head.content_length > max_body:
            return await self._send(errors.too_large(max_body), close=True)
        if _expects_continue(head):
            head.headers = [(n, v) for n, v in head.headers if n.lower() != b"expect"]
            if not self.reader.has_events() and not await self._send(CONTINUE, close=False):
                return False
        body = await self._read_body(head, max_body)
        if body is None:
            return False
        start = trio.current_time()
        found = find_model(_header(head, b"content-type"), body)
        keep = head.keep_alive
        if not isinstance(found, Found):
            return await self._send(errors.model_missing(found.why, close=not keep), close=not keep)
        table = state.table
        route = table.get(found.model)
        if route is None:
            close_names = table.close_names(found.model)
            answer = errors.model_not_found(found.model, close_names, close=not keep)
            return await self._send(answer, close=not keep)
        if route.rewrite_model is not None and route.rewrite_model != found.model:
            body = rewrite(found, body, route.rewrite_model)
        return await self._forward(head, route, body, start)

    async def _read_body(self, head: RequestHead, max_body: int) -> bytes | None:
        """The whole body, at the body pace; None once answered (413, 408, 400) or gone."""
        state = self.state
        pace = BodyPace(state.timeouts, state.poller)
        parts: list[bytes] = []
        size = 0
        try:
            while True:
                ev = await next_body_event(self.reader, pace)
                if ev is END:
                    return b"".join(parts)
                if isinstance(ev, bytes):
                    size += len(ev)
                    if size > max_body:
                        await self._send(errors.too_large(max_body), close=True)
                        return None
                    parts.append(ev)
        except ProtocolError as exc:
            await self._send(errors.failed(exc.status, exc.reason), close=True)
        except BodyTooSlow:
            await self._send(errors.failed(408, "request body too slow"), close=True)
        except (ClientGone, trio.ClosedResourceError):
            pass
        return None

    async def _forward(self, head: RequestHead, route: Route, body: bytes, start: float) -> bool:
        """Hand the request, its body read, to the route's endpoint (see the module doc)."""
        state, conn, reader = self.state, self.conn, self.reader
        try:
            route.endpoint.address  # noqa: B018 - raises once the endpoint has stopped
            session = route.endpoint.session_on(conn, reader)  # raises if its poller is not up
        except RuntimeError:
            close = not head.keep_alive
            return await self._send(errors.not_serving(route.deployment, close=close), close=close)
        reader.put_back([body, END] if body else [END])
        head.framing = Framing.LENGTH
        head.content_length = len(body)
        head.asks_h2c = False  # an h2c upgrade is the gateway's to refuse: plain HTTP/1.1
        counters = state.counters_for(route)
        self.answered = True
        conn.first_byte_at = None
        counters.began()
        self.session = session
        try:
            keep = await session.forward(head, admitted=True)
        except trio.ClosedResourceError:
            # The endpoint stopped under the request: its poller closed what it watched,
            # this connection (moved there) and the replica's.
            session.exchange.status = session.exchange.status or 502
            return False
        finally:
            self.session = None
            conn.move_to(state.poller)
            route.endpoint.session_done(session)
            counters.finished(session.exchange.status or 502, start, conn.first_byte_at)
        if session.linger:
            self.linger = True
        return keep and not session.exchange.close_after


def _header(head: RequestHead, name: bytes) -> bytes | None:
    for n, v in head.headers:
        if n.lower() == name:
            return v
    return None


def _expects_continue(head: RequestHead) -> bool:
    value = _header(head, b"expect")
    return value is not None and value.strip().lower() == b"100-continue"
