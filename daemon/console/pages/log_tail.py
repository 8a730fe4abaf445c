"""A deployment's live log tail for the page, as server-sent events.

`berth logs -f`'s own route (`GET /v1/deployments/NAME/logs?follow=1&tail=N`, in-process)
gives a stream of chunks and the producer that feeds it (one pump per replica, replicas that
appear later included). `log_events` re-cuts the chunks into lines and sends each as
`event: line` with the line as `data:`; the producer travels with the response, so the
server runs it beside the stream and cancels it (every replica's log stream closed) when the
browser goes away: no console work is left behind.

Bounds: the page starts with the last `TAIL` lines of each replica; a line is cut at
`MAX_LINE` bytes; the browser keeps the last `deployment.js` LOG_LINES lines. A comment
line goes out every `KEEPALIVE` seconds without a log line, so a closed tab is noticed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import quote

import trio

from daemon.console.request import ConsoleRequest
from daemon.http.server import Response

TAIL = 100
MAX_LINE = 4096
KEEPALIVE = 15.0
SSE = "text/event-stream; charset=utf-8"


def sse_line(line: str) -> bytes:
    """One `line` event (a log line holds no newline; a stray CR is dropped)."""
    return b"event: line\ndata: " + line.replace("\r", "").encode() + b"\n\n"


def cut_lines(pending: bytes, chunk: bytes) -> tuple[list[str], bytes]:
    """The whole lines of `pending + chunk`, and what is left of a line not yet ended
    (cut at MAX_LINE: a line that long is sent in pieces)."""
    data = pending + chunk
    *whole, rest = data.split(b"\n")
    lines = [w[:MAX_LINE].decode("utf-8", "replace") for w in whole]
    while len(rest) > MAX_LINE:
        lines.append(rest[:MAX_LINE].decode("utf-8", "replace"))
        rest = rest[MAX_LINE:]
    return lines, rest


async def log_events(chunks: trio.abc.ReceiveChannel[bytes]) -> AsyncIterator[bytes]:
    """The SSE body for a channel of log chunks. A channel, not any async iterator: the
    keep-alive cancels a wait for the next chunk, which a channel's `receive` survives and
    an async generator's `__anext__` would not (it would end the generator)."""
    yield b": log tail\n\n"
    pending = b""
    while True:
        chunk: bytes | None = None
        with trio.move_on_after(KEEPALIVE):
            try:
                chunk = await chunks.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                break
        if chunk is None:
            yield b": keepalive\n\n"
            continue
        lines, pending = cut_lines(pending, chunk)
        if lines:
            yield b"".join(sse_line(line) for line in lines)
    if pending:
        yield sse_line(pending.decode("utf-8", "replace"))
    yield b"event: end\ndata: the log stream ended\n\n"


async def logs(request: ConsoleRequest) -> Response:
    name = request.route["name"]
    path = f"/v1/deployments/{quote(name, safe='')}/logs"
    answer = await request.admin.raw("GET", path, query={"follow": "1", "tail": str(TAIL)})
    headers = (("Cache-Control", "no-store"), ("X-Accel-Buffering", "no"))
    if answer.status >= 400:
        body = answer.json if isinstance(answer.json, dict) else {}
        message = str(body.get("error") or f"no logs for {name}")
        return Response(status=answer.status, text=message + "\n", headers=headers)
    if not isinstance(answer.stream, trio.abc.ReceiveChannel):  # no replica to follow yet
        return Response(stream=_once(b"event: end\ndata: no replicas\n\n"), content_type=SSE,
                        headers=headers)  # fmt: skip
    return Response(
        stream=log_events(answer.stream),
        producer=answer.producer,
        content_type=SSE,
        headers=headers,
    )


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data
