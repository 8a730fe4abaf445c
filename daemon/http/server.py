"""berthd's admin API server: HTTP/1.1 on a Unix socket, trio for the I/O, h11 for the protocol.

The server is generic: it knows nothing about deployments. Each complete request becomes an
`AdminRequest` handed to one `Handler`, which answers with an `AdminResponse` (JSON, plain
text, or a stream of chunks). Routing lives in the handler (`docs/admin-api.md`).

Invariants:
- The socket file exists only while `run()` serves, and is never more open than 0660: the
  socket inode is fchmod'ed before bind (so umask can only narrow it) and chmod'ed after.
  Members of the socket's group may drive berth; the directory gates the rest.
- The socket's directory is created 0750 when absent. An existing directory keeps its mode:
  it belongs to whoever made it (systemd's `RuntimeDirectory=` with `RuntimeDirectoryMode=`,
  or the admin), and the socket's own 0660 is the gate. A world-writable directory without
  the sticky bit only earns a warning in the log.
- A socket file left behind by a dead berthd is replaced; one that still answers is not:
  `run()` raises `AdminSocketError("another berthd is serving SOCKET")`.
- A handler's exception never takes the server down: the client gets 500 with
  `{"error": ...}` and the traceback goes to the log. Malformed HTTP gets 400 (h11's
  `error_status_hint`), a body over `max_body` gets 413 without being read into memory.
- A streamed body is flushed chunk by chunk. When the client goes away the stream stops at
  once, even while it is waiting for its next item, and its `aclose()` is awaited.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from types import MappingProxyType
from urllib.parse import parse_qsl, unquote, urlsplit

import h11
import trio

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 1024 * 1024
# Time a client gets to send one whole request (or, on a kept-alive connection, the next one).
DEFAULT_REQUEST_TIMEOUT = 30.0
RECEIVE_SIZE = 64 * 1024
SOCKET_MODE = 0o660
DIRECTORY_MODE = 0o750
_BACKLOG = 64
# How long a probe connect to an existing socket file may take before we call it alive.
_PROBE_TIMEOUT = 2.0
# After refusing a request whose body we did not read, keep reading (and dropping) for a
# moment before closing, so the client finishes sending and sees our answer instead of EPIPE.
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 64 * 1024 * 1024
_ACLOSE_TIMEOUT = 5.0


class AdminSocketError(Exception):
    """The admin socket cannot be set up; the message says why, naming the path."""


@dataclass(frozen=True)
class AdminRequest:
    method: str
    # Percent-decoded path, without the query string.
    path: str
    # Query parameters; a repeated name keeps its last value.
    query: Mapping[str, str] = field(default_factory=dict)
    # Lower-cased header names; repeated headers are joined with ", ".
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True)
class AdminResponse:
    """At most one of `json`, `text` and `stream`; none of them means an empty body."""

    status: int = 200
    json: object = None
    text: str | None = None
    # A streamed (chunked) body; each item is sent as soon as it is produced.
    stream: AsyncIterator[bytes] | None = None
    content_type: str | None = None

    def __post_init__(self) -> None:
        given = sum(x is not None for x in (self.json, self.text, self.stream))
        if given > 1:
            raise ValueError("AdminResponse takes at most one of json, text and stream")


Handler = Callable[[AdminRequest], Awaitable[AdminResponse]]


@dataclass(frozen=True)
class _Refusal:
    """A request the server answers itself, without the handler (400, 413)."""

    status: int
    message: str


class AdminServer:
    def __init__(
        self,
        socket_path: Path,
        handler: Handler,
        *,
        max_body: int = DEFAULT_MAX_BODY,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    ) -> None:
        self._path = Path(socket_path)
        self._handler = handler
        self._max_body = max_body
        self._request_timeout = request_timeout
        self._inode: tuple[int, int] | None = None

    def __repr__(self) -> str:
        state = "serving" if self._inode is not None else "idle"
        return f"<AdminServer {str(self._path)!r} {state}>"

    @property
    def socket_path(self) -> Path:
        return self._path

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind the socket, report started, and serve until cancelled; then remove the file."""
        self._prepare_directory()
        await self._clear_stale_socket()
        sock = await self._bind()
        try:
            listener = trio.SocketListener(sock)
            logger.info("admin API listening on %s", self._path)
            task_status.started()
            await trio.serve_listeners(self._serve_connection, [listener])
        finally:
            sock.close()
            self._remove_socket_file()

    # -- the socket file -------------------------------------------------------------------

    def _prepare_directory(self) -> None:
        directory = self._path.parent
        try:
            directory.mkdir(mode=DIRECTORY_MODE, parents=True)
        except FileExistsError:
            mode = directory.stat().st_mode
            if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
                logger.warning(
                    "%s is world-writable: anyone can replace berthd's socket there", directory
                )
            return
        except OSError as exc:
            raise AdminSocketError(f"cannot create {directory}: {exc.strerror}") from exc
        # mkdir's mode went through the umask; say exactly what we mean.
        directory.chmod(DIRECTORY_MODE)

    async def _clear_stale_socket(self) -> None:
        try:
            st = self._path.lstat()
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise AdminSocketError(f"{self._path} exists and is not a socket; not replacing it")
        with trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                with trio.fail_after(_PROBE_TIMEOUT):
                    await probe.connect(str(self._path))
            except (ConnectionRefusedError, FileNotFoundError):
                pass  # nobody listens: a dead berthd's leftover
            except PermissionError as exc:
                raise AdminSocketError(f"cannot check {self._path}: permission denied") from exc
            except trio.TooSlowError as exc:
                # A full backlog: something is there, just busy.
                raise AdminSocketError(f"another berthd is serving {self._path}") from exc
            else:
                raise AdminSocketError(f"another berthd is serving {self._path}")
        logger.info("removing stale admin socket %s", self._path)
        self._path.unlink(missing_ok=True)

    async def _bind(self) -> trio.socket.SocketType:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Linux creates the socket file with the inode's mode minus the umask: set the
            # inode's mode first so the file is never, even briefly, more open than 0660.
            os.fchmod(sock.fileno(), SOCKET_MODE)
            await sock.bind(str(self._path))
            self._path.chmod(SOCKET_MODE)
            sock.listen(_BACKLOG)
            st = self._path.stat()
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:  # someone bound it since our check
                raise AdminSocketError(f"another berthd is serving {self._path}") from exc
            raise AdminSocketError(f"cannot listen on {self._path}: {exc.strerror}") from exc
        self._inode = (st.st_dev, st.st_ino)
        return sock

    def _remove_socket_file(self) -> None:
        inode, self._inode = self._inode, None
        try:
            st = self._path.lstat()
        except FileNotFoundError:
            return
        # Only our own file: if someone replaced it, it is theirs now.
        if inode == (st.st_dev, st.st_ino):
            self._path.unlink(missing_ok=True)

    # -- one connection --------------------------------------------------------------------

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        async with stream:
            try:
                while True:
                    request: AdminRequest | _Refusal | None = None
                    with trio.move_on_after(self._request_timeout):
                        request = await self._read_request(conn, stream)
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
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the client went away; nothing to tell it

    async def _read_request(
        self, conn: h11.Connection, stream: trio.SocketStream
    ) -> AdminRequest | _Refusal | None:
        try:
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
        except h11.RemoteProtocolError as exc:
            return _Refusal(exc.error_status_hint, f"bad request: {exc}")
        target = urlsplit(head.target.decode("ascii", errors="replace"))
        return AdminRequest(
            method=head.method.decode("ascii", errors="replace"),
            path=unquote(target.path),
            query=MappingProxyType(dict(parse_qsl(target.query, keep_blank_values=True))),
            headers=MappingProxyType(headers),
            body=bytes(body),
        )

    async def _call_handler(self, request: AdminRequest) -> AdminResponse:
        # The one place that catches everything: a bug in one route must not take the
        # admin API down with it. Cancellation is a BaseException and still propagates.
        try:
            return await self._handler(request)
        except Exception as exc:
            logger.exception("admin handler failed on %s %s", request.method, request.path)
            return AdminResponse(status=500, json={"error": _internal_error(exc)})

    async def _refuse(
        self, conn: h11.Connection, stream: trio.SocketStream, refusal: _Refusal
    ) -> None:
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return  # too broken to answer
        body = _json_body({"error": refusal.message})
        await _send(
            conn,
            stream,
            h11.Response(
                status_code=refusal.status,
                reason=_reason(refusal.status),
                headers=[
                    ("content-type", "application/json"),
                    ("content-length", str(len(body))),
                    ("connection", "close"),
                ],
            ),
        )
        await _send(conn, stream, h11.Data(data=body))
        await _send(conn, stream, h11.EndOfMessage())
        await _linger(stream)

    async def _send_response(
        self,
        conn: h11.Connection,
        stream: trio.SocketStream,
        method: str,
        response: AdminResponse,
    ) -> None:
        if response.stream is not None:
            stream_type = response.content_type or "application/octet-stream"
            await _send(
                conn,
                stream,
                h11.Response(
                    status_code=response.status,
                    reason=_reason(response.status),
                    headers=[("content-type", stream_type)],
                ),
            )
            await self._send_stream(conn, stream, response.stream)
            return
        try:
            body, content_type = _render(response)
        except (TypeError, ValueError) as exc:
            logger.exception("admin handler answered with a body that is not JSON")
            body, content_type = _json_body({"error": _internal_error(exc)}), "application/json"
            response = AdminResponse(status=500)
        headers: list[tuple[str, str]] = [("content-length", str(len(body)))]
        if content_type is not None:
            headers.append(("content-type", content_type))
        await _send(
            conn,
            stream,
            h11.Response(
                status_code=response.status, reason=_reason(response.status), headers=headers
            ),
        )
        if body and method != "HEAD":
            await _send(conn, stream, h11.Data(data=body))
        await _send(conn, stream, h11.EndOfMessage())

    async def _send_stream(
        self, conn: h11.Connection, stream: trio.SocketStream, body: AsyncIterator[bytes]
    ) -> None:
        """Send `body` chunk by chunk; stop when it ends, fails, or the client disconnects.

        On an early stop the message is left unfinished, and the caller closes the connection.
        """
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_cancel_on_disconnect, conn, stream, nursery.cancel_scope)
                try:
                    async for chunk in body:
                        if chunk:
                            await _send(conn, stream, h11.Data(data=chunk))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    nursery.cancel_scope.cancel()
                    return
                except Exception:
                    # Headers are out: the only way left to say "failed" is to cut the body.
                    logger.exception("admin response stream failed")
                    nursery.cancel_scope.cancel()
                    return
                await _send(conn, stream, h11.EndOfMessage())
                nursery.cancel_scope.cancel()
        finally:
            aclose = getattr(body, "aclose", None)
            if aclose is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(_ACLOSE_TIMEOUT):
                    await aclose()


async def _next_event(
    conn: h11.Connection, stream: trio.SocketStream
) -> h11.Event | type[h11.PAUSED]:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            pass
        elif event is h11.PAUSED or isinstance(event, h11.Event):
            return event
        if conn.they_are_waiting_for_100_continue:
            await _send(conn, stream, h11.InformationalResponse(status_code=100, headers=[]))
        conn.receive_data(await stream.receive_some(RECEIVE_SIZE))


async def _send(conn: h11.Connection, stream: trio.SocketStream, event: h11.Event) -> None:
    data = conn.send(event)
    if data:
        await stream.send_all(data)


async def _cancel_on_disconnect(
    conn: h11.Connection, stream: trio.SocketStream, scope: trio.CancelScope
) -> None:
    """Cancel `scope` when the client closes its end while a stream is being sent."""
    try:
        data = await stream.receive_some(RECEIVE_SIZE)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        data = b""
    if data:
        # A pipelined next request: h11 keeps it for the next cycle. We stop watching (rather
        # than buffer without bound); a later disconnect still shows up as a failed send.
        conn.receive_data(data)
        return
    scope.cancel()


async def _linger(stream: trio.SocketStream) -> None:
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


def _render(response: AdminResponse) -> tuple[bytes, str | None]:
    if response.text is not None:
        return response.text.encode(), response.content_type or "text/plain; charset=utf-8"
    if response.json is not None:
        return _json_body(response.json), response.content_type or "application/json"
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
