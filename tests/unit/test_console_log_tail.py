"""The deployment page's log tail (daemon/console/pages/log_tail.py): chunks of `berth logs
-f` re-cut into one server-sent event per line, bounded, with keep-alives while quiet."""

from __future__ import annotations

import trio
from trio.testing import MockClock

from daemon.console.pages.log_tail import KEEPALIVE, MAX_LINE, cut_lines, log_events, sse_line


def test_cut_lines_keeps_an_unfinished_line_for_the_next_chunk() -> None:
    lines, rest = cut_lines(b"", b"web-a | one\nweb-a | tw")
    assert lines == ["web-a | one"] and rest == b"web-a | tw"
    lines, rest = cut_lines(rest, b"o\n\xff bad utf-8\n")
    assert lines == ["web-a | two", "\ufffd bad utf-8"] and rest == b""


def test_a_line_past_the_limit_goes_in_pieces() -> None:
    lines, rest = cut_lines(b"", b"x" * (MAX_LINE * 2 + 10))
    assert lines == ["x" * MAX_LINE, "x" * MAX_LINE] and rest == b"x" * 10
    lines, _ = cut_lines(b"", b"y" * (MAX_LINE + 5) + b"\n")
    assert lines == ["y" * MAX_LINE]


def test_an_event_is_one_line_whatever_it_holds() -> None:
    assert sse_line("a <b>\r") == b"event: line\ndata: a <b>\n\n"


async def test_log_events_from_a_stream(mock_clock: MockClock) -> None:
    mock_clock.autojump_threshold = 0
    send, receive = trio.open_memory_channel[bytes](8)
    out: list[bytes] = []

    async def read() -> None:
        async for event in log_events(receive):
            out.append(event)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await send.send(b"a\nb")
        await trio.sleep(KEEPALIVE + 1)  # quiet: one keep-alive
        await send.send(b"c\n")
        await send.send(b"tail without newline")
        await send.aclose()
    assert out[0] == b": log tail\n\n"
    assert out[1] == sse_line("a")
    assert out[2] == b": keepalive\n\n"
    assert out[3] == sse_line("bc")
    assert out[4] == sse_line("tail without newline")
    assert out[5].startswith(b"event: end\n")
    assert len(out) == 6
