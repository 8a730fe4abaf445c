"""berthd's one HTTP/1.1 server core: trio for the I/O, h11 for the protocol.

An `HttpServer` is one listener (`daemon.http.listeners`: the admin Unix socket, or TCP for
`[metrics] listen`) and one `Handler`. Each complete request becomes a `Request` handed to
the handler, which answers with a `Response` (JSON, text, bytes, or a stream of chunks).
The server is generic: routing and meaning live in the handler (`daemon.api.routes` for
docs/admin-api.md, `daemon.metrics.exposition` for /metrics). What differs between listeners
is a parameter: the body limit, the timeouts, and how the server's own refusals read
(`json_error` for the admin API, `text_error` for /metrics).

Invariants:
- A connection waits at most `idle_timeout` for the head of its next request (a new or a
  kept-alive connection), then `request_timeout` for the body; past either it is closed
  without an answer. Sending a whole (not streamed) answer is bounded by `request_timeout`
  too; the handler itself and a streamed body are not (`berth logs -f` runs for hours).
- A fault stays in its request or its connection. A handler's exception gets the client a
  500, the traceback goes to the log, and the connection goes on; any other unexpected
  error while serving a connection (a response h11 refuses to send, a stream or its
  producer failing) is logged and ends that connection only; never the server, never
  another connection. Cancellation is not an error and passes.
- Malformed HTTP gets 400 (h11's `error_status_hint`), a body over `max_body` gets 413
  without being read into memory; after such a refusal the server half-closes and drains
  what the client still sends for a moment, so that the client reads the answer instead
  of a reset.
- HEAD gets the headers (Content-Length included) of the GET answer, without its body.
- On a Unix socket each request carries the uid of the process at the other end
  (`Request.peer_uid`, from SO_PEERCRED: what the kernel says, not what the client claims),
  read once when the connection is accepted; None on TCP.
- A streamed body is flushed chunk by chunk. When the client goes away the stream stops at
  once, even while it is waiting for its next item, and its `aclose()` is awaited.
- A stream that needs tasks of its own (`berth logs -f` merges several replicas' logs) does
  not yield from inside a nursery (a generator's nursery would outlive the scopes it was
  opened in when its consumer stops early): its `producer` feeds a memory channel whose
  receiving end is the `stream`, and the server runs the producer beside the stream, in
  the connection's own nursery, and cancels it as soon as the stream stops for any reason.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from types import MappingProxyType
from typing import Generic, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import h11
import trio

from daemon.http.listeners import Listener

logger = logging.getLogger("berthd.http")

DEFAULT_MAX_BODY = 1024 * 1024
# Time a connection gets to send the head of a request (or, kept alive, of the next one).
DEFAULT_IDLE_TIMEOUT = 30.0
# Time a client gets to send a request's body, and to take a whole answer.
DEFAULT_REQUEST_TIMEOUT = 30.0
RECEIVE_SIZE = 64 * 1024
# After refusing a request whose body we did not read, keep reading (and dropping) for a
# moment before closing, so the client finishes sending and sees our answer instead of EPIPE.
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 64 * 1024 * 1024
_ACLOSE_TIMEOUT = 5.0

AddressT = TypeVar("AddressT")
# A connection: plain TCP or Unix, or TLS over TCP (the web console's `[console.tls]`).
Stream = trio.SocketStream | trio.SSLStream[trio.SocketStream]


@dataclass(frozen=True)
class Request:
    method: str
    # Percent-decoded path, without the query string.
    path: str
    # Query parameters; a repeated name keeps its last value.
    query: Mapping[str, str] = field(default_factory=dict)
    # Lower-cased header names; repeated headers are joined with ", ".
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    # The caller's uid on a Unix socket (SO_PEERCRED); None on TCP.
    peer_uid: int | None = None
    # The caller's IP address on TCP (the web console's sign-in limit); None on a Unix socket.
    peer_host: str | None = None


@dataclass(frozen=True)
class Response:
    """At most one of `json`, `text`, `body` and `stream`; none of them means an empty body."""

    status: int = 200
    json: object = None
    text: str | None = None
    body: bytes | None = None
    # A streamed (chunked) body; each item is sent as soon as it is produced.
    stream: AsyncIterator[bytes] | None = None
    # What feeds `stream` (typically into a memory channel whose receiving end `stream` is),
    # run by the server beside it and cancelled when it stops; see the module docstring.
    producer: Callable[[], Awaitable[None]] | None = None
    content_type: str | None = None
    # More response headers (Allow, Content-Encoding); the server writes the framing ones.
    headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        given = sum(x is not None for x in (self.json, self.text, self.body, self.stream))
        if given > 1:
            raise ValueError("Response takes at most one of json, text, body and stream")
        if self.producer is not None and self.stream is None:
            raise ValueError("Response takes a producer only with a stream")


Handler = Callable[[Request], Awaitable[Response]]
# How the server words its own answers (400, 413, 500): (status, message) -> Response.
ErrorResponse = Callable[[int, str], Response]


def json_error(status: int, message: str) -> Response:
    """`{"error": message}`: the admin API's error body (docs/admin-api.md)."""
    return Response(status=status, json={"error": message})


def text_error(status: int, message: str) -> Response:
    return Response(status=status, text=f"{message}\n")


@dataclass(frozen=True)
class _Refusal:
    """A request the server answers itself, without the handler (400, 413)."""

    status: int
    message: str


class HttpServer(Generic[AddressT]):
    """Serve `handler` on `listener`; start with `nursery.start(server.run)`, which returns
    the address bound once it listens and raises the listener's error if it cannot."""

    def __init__(
        self,
        listener: Listener[AddressT],
        handler: Handler,
        *,
        name: str = "http",
        max_body: int = DEFAULT_MAX_BODY,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        errors: ErrorResponse = json_error,
    ) -> None:
        self.listener = listener
        self.name = name
        self._handler = handler
        self._max_body = max_body
        self._idle_timeout = idle_timeout
        self._request_timeout = request_timeout
        self._errors = errors
        self.address: AddressT | None = None

    def __repr__(self) -> str:
        state = f"serving {self.address}" if self.address is not None else "idle"
        return f"<HttpServer {self.name} {self.listener!r} {state}>"

    async def run(
        self, *, task_status: trio.TaskStatus[AddressT] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen, report the address bound, and serve until cancelled; then stop listening."""
        async with self.listener.listen() as (listeners, address):
            self.address = address
            try:
                logger.info("%s: listening on %s", self.name, _show(address))
                task_status.started(address)
                await trio.serve_listeners(self._serve_connection, list(listeners))
            finally:
                self.address = None

    # -- one connection --------------------------------------------------------------------

    async def _serve_connection(self, stream: Stream) -> None:
        conn = h11.Connection(h11.SERVER)
        request: Request | _Refusal | None = None
        peer_uid, peer_host = _peer_uid(stream), _peer_host(stream)
        async with stream:
            try:
                while True:
                    request = await self._read_request(conn, stream, peer_uid, peer_host)
                    if request is None:
                        return  # closed, or too slow to ask
                    if isinstance(request, _Refusal):
                        await self._refuse(conn, stream, request)
                        return
                    response = await self._call_handler(request)
                    await self._send_response(conn, stream, request.method, response)
                    if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                        return
                    conn.start_next_cycle()
                    request = None
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the client went away; nothing to tell it
            except Exception:
                # The connection's barrier: whatever broke, it ends this connection only.
                during = (
                    f" answering {request.method} {request.path}"
                    if isinstance(request, Request)
                    else ""
                )
                logger.exception("%s connection failed%s; closed it", self.name, during)

    async def _read_request(
        self,
        conn: h11.Connection,
        stream: Stream,
        peer_uid: int | None = None,
        peer_host: str | None = None,
    ) -> Request | _Refusal | None:
        try:
            head: h11.Event | type[h11.PAUSED] | None = None
            with trio.move_on_after(self._idle_timeout):
                head = await _next_event(conn, stream)
            if not isinstance(head, h11.Request):
                return None
            headers: dict[str, str] = {}
            for name, value in head.headers:
                key = name.decode("ascii").lower()
                text = value.decode("latin-1")
                headers[key] = f"{headers[key]}, {text}" if key in headers else text
            length = headers.get("content-length")
            if length is not None and int(length) > self._max_body:
                return _Refusal(413, f"request body over {self._max_body} bytes")
            body = bytearray()
            with trio.move_on_after(self._request_timeout) as scope:
                while True:
                    event = await _next_event(conn, stream)
                    if isinstance(event, h11.Data):
                        body += event.data
                        if len(body) > self._max_body:
                            return _Refusal(413, f"request body over {self._max_body} bytes")
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    else:
                        return None
            if scope.cancelled_caught:
                return None
        except h11.RemoteProtocolError as exc:
            return _Refusal(exc.error_status_hint, f"bad request: {exc}")
        target = urlsplit(head.target.decode("ascii", errors="replace"))
        return Request(
            method=head.method.decode("ascii", errors="replace"),
            path=unquote(target.path),
            query=MappingProxyType(dict(parse_qsl(target.query, keep_blank_values=True))),
            headers=MappingProxyType(headers),
            body=bytes(body),
            peer_uid=peer_uid,
            peer_host=peer_host,
        )

    async def _call_handler(self, request: Request) -> Response:
        # The one place that catches everything: a bug in one route must not take the
        # server down with it. Cancellation is a BaseException and still propagates.
        try:
            return await self._handler(request)
        except Exception as exc:
            logger.exception("%s handler failed on %s %s", self.name, request.method, request.path)
            return self._errors(500, _internal_error(exc))

    async def _refuse(self, conn: h11.Connection, stream: Stream, refusal: _Refusal) -> None:
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return  # too broken to answer
        answer = self._errors(refusal.status, refusal.message)
        body, content_type = _render(answer)
        headers = [("content-length", str(len(body))), ("connection", "close")]
        if content_type is not None:
            headers.insert(0, ("content-type", content_type))
        headers.extend(answer.headers)  # the listener's own (the console's CSP, ...)
        with trio.move_on_after(self._request_timeout) as scope:
            await _send(conn, stream, _head(refusal.status, headers))
            await _send(conn, stream, h11.Data(data=body))
            await _send(conn, stream, h11.EndOfMessage())
            if isinstance(stream, trio.SocketStream):  # TLS has no half-close
                await stream.send_eof()
        if not scope.cancelled_caught:
            await _linger(stream)

    async def _send_response(
        self,
        conn: h11.Connection,
        stream: Stream,
        method: str,
        response: Response,
    ) -> None:
        if response.stream is not None:
            stream_type = response.content_type or "application/octet-stream"
            head = _head(response.status, [("content-type", stream_type), *response.headers])
            await _send(conn, stream, head)
            await self._send_stream(conn, stream, response.stream, response.producer)
            return
        try:
            body, content_type = _render(response)
        except (TypeError, ValueError) as exc:
            logger.exception("%s handler answered with a body that is not JSON", self.name)
            response = self._errors(500, _internal_error(exc))
            body, content_type = _render(response)
        headers: list[tuple[str, str]] = [("content-length", str(len(body)))]
        if content_type is not None:
            headers.append(("content-type", content_type))
        headers.extend(response.headers)
        # Past the deadline the message is left unfinished, and the caller closes.
        with trio.move_on_after(self._request_timeout):
            await _send(conn, stream, _head(response.status, headers))
            if body and method != "HEAD":
                await _send(conn, stream, h11.Data(data=body))
            await _send(conn, stream, h11.EndOfMessage())

    async def _send_stream(
        self,
        conn: h11.Connection,
        stream: Stream,
        body: AsyncIterator[bytes],
        producer: Callable[[], Awaitable[None]] | None,
    ) -> None:
        """Send `body` chunk by chunk; stop when it ends, fails, or the client disconnects.

        `producer` runs beside it meanwhile, and is cancelled once the body has stopped. On an
        early stop the message is left unfinished, and the caller closes the connection.
        """
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_cancel_on_disconnect, conn, stream, nursery.cancel_scope)
                if producer is not None:
                    nursery.start_soon(self._produce, producer, nursery.cancel_scope)
                try:
                    async for chunk in body:
                        if chunk:
                            await _send(conn, stream, h11.Data(data=chunk))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    nursery.cancel_scope.cancel()
                    return
                except Exception:
                    # Headers are out: the only way left to say "failed" is to cut the body.
                    logger.exception("%s response stream failed", self.name)
                    nursery.cancel_scope.cancel()
                    return
                await _send(conn, stream, h11.EndOfMessage())
                nursery.cancel_scope.cancel()
        finally:
            aclose = getattr(body, "aclose", None)
            if aclose is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(_ACLOSE_TIMEOUT):
                    await aclose()

    async def _produce(
        self, producer: Callable[[], Awaitable[None]], stream_scope: trio.CancelScope
    ) -> None:
        try:
            await producer()
        except Exception:
            # As a failing stream: the body is cut (the producer's channel may never close).
            logger.exception("%s response stream's producer failed", self.name)
            stream_scope.cancel()


_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def _peer_uid(stream: Stream) -> int | None:
    """The uid of the process that connected, on a Unix socket; None otherwise."""
    sock = _socket_of(stream)
    if sock.family != socket.AF_UNIX:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    except OSError:
        return None
    _pid, uid, _gid = _PEERCRED.unpack(raw)
    return int(uid)


def _socket_of(stream: Stream) -> trio.socket.SocketType:
    return (
        stream.socket if isinstance(stream, trio.SocketStream) else stream.transport_stream.socket
    )


def _peer_host(stream: Stream) -> str | None:
    """The IP address of the other end on TCP; None otherwise."""
    sock = _socket_of(stream)
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        return str(sock.getpeername()[0])
    except OSError:
        return None


async def _next_event(conn: h11.Connection, stream: Stream) -> h11.Event | type[h11.PAUSED]:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            pass
        elif event is h11.PAUSED or isinstance(event, h11.Event):
            return event
        if conn.they_are_waiting_for_100_continue:
            await _send(conn, stream, h11.InformationalResponse(status_code=100, headers=[]))
        conn.receive_data(bytes(await stream.receive_some(RECEIVE_SIZE)))


async def _send(conn: h11.Connection, stream: Stream, event: h11.Event) -> None:
    data = conn.send(event)
    if data:
        await stream.send_all(data)


def _head(status: int, headers: list[tuple[str, str]]) -> h11.Response:
    return h11.Response(status_code=status, reason=_reason(status), headers=headers)


async def _cancel_on_disconnect(
    conn: h11.Connection, stream: Stream, scope: trio.CancelScope
) -> None:
    """Cancel `scope` when the client closes its end while a stream is being sent."""
    try:
        data = await stream.receive_some(RECEIVE_SIZE)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        data = b""
    if data:
        # A pipelined next request: h11 keeps it for the next cycle. We stop watching (rather
        # than buffer without bound); a later disconnect still shows up as a failed send.
        conn.receive_data(bytes(data))
        return
    scope.cancel()


async def _linger(stream: Stream) -> None:
    received = 0
    with trio.move_on_after(_LINGER_SECONDS):
        while received < _LINGER_BYTES:
            try:
                data = await stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            received += len(data)


def _render(response: Response) -> tuple[bytes, str | None]:
    if response.text is not None:
        return response.text.encode(), response.content_type or "text/plain; charset=utf-8"
    if response.json is not None:
        return _json_body(response.json), response.content_type or "application/json"
    if response.body is not None:
        return response.body, response.content_type or "application/octet-stream"
    return b"", response.content_type


def _json_body(value: object) -> bytes:
    return json.dumps(value).encode() + b"\n"


def _internal_error(exc: BaseException) -> str:
    detail = " ".join(str(exc).split())
    name = type(exc).__name__
    return f"internal error: {name}: {detail}" if detail else f"internal error: {name}"


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _show(address: object) -> str:
    if isinstance(address, tuple) and len(address) == 2:
        host, port = address
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)
