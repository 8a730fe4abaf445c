"""The hot path's shortcuts give the same bytes as the general path: header lines the
parser pre-formats (`RequestHead.lines`, `ResponseHead.lines`), and one `ResponseParser`
for every response of a kept-alive connection (`ResponseParser.next_response`)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.headers import request_head_bytes, response_head_bytes
from proxy.protocol import (
    END,
    Framing,
    ProtocolError,
    RequestHead,
    RequestParser,
    ResponseHead,
    ResponseParser,
)

REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n",
    b"GET /x?y=1 HTTP/1.1\r\nHost: a.example\r\nUser-Agent: t\r\nAccept: */*\r\n"
    b"Connection: keep-alive\r\n\r\n",
    b"POST /v1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Type: x/y\r\n\r\nhi",
    b"POST /v1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\n"
    b"X-Real-IP: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Port: 1\r\n"
    b"X-Forwarded-Host: evil\r\nX-Other: kept\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: mine\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close, X-Secret\r\nX-Secret: s\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Key: k\r\n\r\n",
    b"GET http://a.example/p HTTP/1.1\r\nHost: a.example\r\n\r\n",
    b"GET http://a.example/p HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.0\r\nUser-Agent: old\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\nKeep-Alive: 5\r\nProxy-Connection: x\r\n\r\n",
]

RESPONSES = [
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
    b"Connection: keep-alive\r\n\r\nhi",
    b"HTTP/1.1 200 Fine\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\nETag: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nContent-Type: x\r\n\r\nbody",
    b"HTTP/1.1 503 Busy\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n",
]


def _request_head(raw: bytes) -> RequestHead:
    head = RequestParser().feed(raw)[0]
    assert isinstance(head, RequestHead)
    return head


def _response_head(raw: bytes) -> ResponseHead:
    head = ResponseParser().feed(raw)[0]
    assert isinstance(head, ResponseHead)
    return head


def _general_request(head: RequestHead, **kw: object) -> bytes:
    lines, head.lines = head.lines, None
    try:
        return request_head_bytes(head, **kw)  # type: ignore[arg-type]
    finally:
        head.lines = lines


@pytest.mark.parametrize("raw", REQUESTS)
@pytest.mark.parametrize("peer", [b"127.0.0.1", b"::1"])
@pytest.mark.parametrize("proto", [b"http", b"https"])
@pytest.mark.parametrize("framing", [Framing.NONE, Framing.LENGTH, Framing.CHUNKED])
def test_request_lines_give_the_general_paths_bytes(
    raw: bytes, peer: bytes, proto: bytes, framing: Framing
) -> None:
    head = _request_head(raw)
    kw = {"peer": peer, "request_id": b"id-1", "framing": framing, "proto": proto}
    assert request_head_bytes(head, **kw) == _general_request(head, **kw)  # type: ignore[arg-type]


def test_request_lines_are_used_only_while_they_describe_the_headers() -> None:
    head = _request_head(b"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer t\r\n\r\n")
    assert head.lines is not None and b"Authorization" in head.lines
    head.headers = [(n, v) for n, v in head.headers if n != b"Authorization"]  # as auth does
    out = request_head_bytes(head, peer=b"127.0.0.1", request_id=b"i", framing=Framing.NONE)
    assert b"Authorization" not in out


def test_request_lines_not_kept_where_a_second_pass_or_a_parser_host_is_needed() -> None:
    assert _request_head(REQUESTS[6]).lines is None  # Connection names X-Secret
    assert _request_head(REQUESTS[9]).lines is None  # HTTP/1.0 absolute form: Host added
    trusted = _request_head(REQUESTS[4])
    out = request_head_bytes(
        trusted, peer=b"10.0.0.1", request_id=b"i", framing=Framing.NONE, trusted=True
    )
    assert b"X-Forwarded-For: 6.6.6.6, 10.0.0.1\r\n" in out


@pytest.mark.parametrize("raw", RESPONSES)
@pytest.mark.parametrize("framing", list(Framing))
@pytest.mark.parametrize("close", [False, True])
def test_response_lines_give_the_general_paths_bytes(
    raw: bytes, framing: Framing, close: bool
) -> None:
    head = _response_head(raw)
    fast = response_head_bytes(head, framing=framing, close=close)
    head.lines = None
    assert fast == response_head_bytes(head, framing=framing, close=close)


_NAMES = st.sampled_from(
    [b"Host", b"X-A", b"Connection", b"Content-Length", b"X-Forwarded-For", b"Forwarded",
     b"X-Forwarded-Thing", b"X-Request-Id", b"Keep-Alive", b"Upgrade", b"X-Real-IP", b"TE"]
)  # fmt: skip
_VALUES = st.sampled_from([b"1", b"close", b"keep-alive", b"x-a", b"a, b", b"websocket"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_NAMES, _VALUES), max_size=8), st.booleans())
def test_head_lines_match_for_any_header_list(
    fields: list[tuple[bytes, bytes]], response: bool
) -> None:
    body = b"".join(n + b": " + v + b"\r\n" for n, v in fields)
    if response:
        try:
            events = ResponseParser().feed(b"HTTP/1.1 200 OK\r\n" + body + b"\r\n")
        except ProtocolError:
            return  # refused (a bad Content-Length): nothing to compare
        if not events or not isinstance(events[0], ResponseHead):
            return  # refused (a bad Content-Length): nothing to compare
        rhead = events[0]
        fast = response_head_bytes(rhead, framing=Framing.LENGTH, close=False)
        rhead.lines = None
        assert fast == response_head_bytes(rhead, framing=Framing.LENGTH, close=False)
        return
    try:
        events = RequestParser().feed(b"GET / HTTP/1.1\r\nHost: h\r\n" + body + b"\r\n")
    except ProtocolError:
        return  # refused (two Hosts, a bad length): nothing to compare
    if not events or not isinstance(events[0], RequestHead):
        return
    kw = {"peer": b"127.0.0.1", "request_id": b"i", "framing": Framing.NONE}
    fast_req = request_head_bytes(events[0], **kw)  # type: ignore[arg-type]
    assert fast_req == _general_request(events[0], **kw)


GET_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_one_parser_serves_every_response_of_a_connection() -> None:
    parser = ResponseParser()
    for n in range(3):
        if n:
            parser.next_response()
        events = parser.feed(GET_OK)
        assert [type(e) for e in events] == [ResponseHead, bytes, type(END)]
        assert parser.done and parser.reusable


def test_after_a_head_response_the_next_response_parses_on_a_fresh_llhttp() -> None:
    parser = ResponseParser(head_request=True)
    events = parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
    assert events[-1] is END and parser.reusable  # no body follows a HEAD response
    parser.next_response()  # llhttp still waits for 5 body bytes: it is replaced
    events = parser.feed(GET_OK)
    assert isinstance(events[0], ResponseHead) and events[1] == b"ok" and events[2] is END
    parser.next_response(head_request=True)
    events = parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert events[-1] is END


def test_interim_responses_then_the_next_response() -> None:
    parser = ResponseParser()
    events = parser.feed(b"HTTP/1.1 100 Continue\r\n\r\n" + GET_OK)
    assert [e.status for e in events if isinstance(e, ResponseHead)] == [100, 200]
    parser.next_response()
    assert parser.feed(GET_OK)[-1] is END and parser.reusable


def test_a_response_cut_in_pieces_on_a_reused_parser() -> None:
    parser = ResponseParser()
    parser.feed(GET_OK)
    parser.next_response()
    got = [e for i in range(len(GET_OK)) for e in parser.feed(GET_OK[i : i + 1])]
    assert b"".join(e for e in got if isinstance(e, bytes)) == b"ok" and got[-1] is END
