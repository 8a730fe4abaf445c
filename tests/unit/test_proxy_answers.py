"""The proxy's own answers (`proxy.answers`): text or JSON, and the bytes on the wire."""

from __future__ import annotations

import json

import h11
import pytest

from proxy.answers import answer_for, error_response, error_type, wants_json
from proxy.protocol import RequestHead, RequestParser


def _head(*headers: tuple[bytes, bytes], method: bytes = b"GET") -> RequestHead:
    raw = b"%s /v1/chat HTTP/1.1\r\nHost: a\r\n" % method
    raw += b"".join(b"%s: %s\r\n" % h for h in headers) + b"\r\n"
    head = RequestParser().feed(raw)[0]
    assert isinstance(head, RequestHead)
    return head


def _parse(answer: bytes, method: str = "GET") -> tuple[h11.Response, bytes]:
    """The answer as a client reads it (h11), asserting it is one whole, valid response."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "a")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(answer)
    response = conn.next_event()
    assert isinstance(response, h11.Response)
    body = b""
    while True:
        ev = conn.next_event()
        if isinstance(ev, h11.Data):
            body += ev.data
        else:
            assert isinstance(ev, h11.EndOfMessage), ev
            break
    assert conn.next_event() is h11.NEED_DATA  # nothing after the message
    return response, body


def _headers(response: h11.Response) -> dict[bytes, bytes]:
    return {n: v for n, v in response.headers}


@pytest.mark.parametrize(
    "headers",
    [
        [(b"Accept", b"application/json")],
        [(b"accept", b"text/plain, Application/JSON; charset=utf-8")],
        [(b"Accept", b"application/problem+json")],
        [(b"Accept", b"text/html"), (b"Accept", b"application/json;q=0.5")],
        [(b"Content-Type", b"application/json; charset=utf-8")],
        [(b"Accept", b"*/*"), (b"Content-Type", b"application/json")],
    ],
)
def test_a_request_that_names_json_wants_json(headers: list[tuple[bytes, bytes]]) -> None:
    assert wants_json(_head(*headers))


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(b"Accept", b"*/*")],
        [(b"Accept", b"application/*")],
        [(b"Accept", b"text/plain")],
        [(b"Accept", b"application/json;q=0, text/plain")],
        [(b"Accept", b"application/json; q=0.0")],
        [(b"Content-Type", b"application/x-ndjson")],
        [(b"Content-Type", b"text/plain"), (b"X-Accept", b"application/json")],
    ],
)
def test_a_request_that_does_not_name_json_gets_text(headers: list[tuple[bytes, bytes]]) -> None:
    assert not wants_json(_head(*headers))


def test_json_answer_is_an_openai_error_object_with_the_right_length() -> None:
    answer = error_response(503, "no ready replica", close=False, retry_after=1, as_json=True)
    response, body = _parse(answer)
    assert response.status_code == 503
    hs = _headers(response)
    assert hs[b"content-type"] == b"application/json"
    assert hs[b"retry-after"] == b"1"
    assert int(hs[b"content-length"]) == len(body)
    assert b"connection" not in hs
    assert json.loads(body) == {
        "error": {"message": "no ready replica", "type": "unavailable", "param": None, "code": 503}
    }


def test_text_answer_keeps_its_form() -> None:
    answer = error_response(504, "the replica did not answer in time")
    assert answer == (
        b"HTTP/1.1 504 Gateway Timeout\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 35\r\nConnection: close\r\n\r\n"
        b"the replica did not answer in time\n"
    )


def test_both_forms_differ_only_in_body_and_content_type() -> None:
    text = error_response(503, "no ready replica", close=False, retry_after=1)
    as_json = error_response(503, "no ready replica", close=False, retry_after=1, as_json=True)
    (t_resp, t_body), (j_resp, j_body) = _parse(text), _parse(as_json)
    assert t_resp.status_code == j_resp.status_code == 503
    assert t_resp.reason == j_resp.reason == b"Service Unavailable"
    t_hs, j_hs = _headers(t_resp), _headers(j_resp)
    for hs, body in ((t_hs, t_body), (j_hs, j_body)):
        assert int(hs.pop(b"content-length")) == len(body)
        hs.pop(b"content-type")
    assert t_hs == j_hs == {b"retry-after": b"1"}


def test_message_is_escaped_in_json() -> None:
    message = 'a "quoted" \\ path\nand a line — ünïcode \x00'
    _, body = _parse(error_response(502, message, as_json=True))
    assert json.loads(body)["error"]["message"] == message
    assert body.isascii() and b"\n" not in body[:-1]  # one line, whatever the message


def test_text_message_is_utf8_and_counted_in_bytes() -> None:
    response, body = _parse(error_response(502, "ünïcode"))
    assert body == "ünïcode\n".encode()
    assert int(_headers(response)[b"content-length"]) == len(body) == 10


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request"),
        (408, "invalid_request"),
        (431, "invalid_request"),
        (502, "upstream_error"),
        (503, "unavailable"),
        (504, "timeout"),
        (500, "server_error"),
    ],
)
def test_types_by_status(status: int, kind: str) -> None:
    assert error_type(status) == kind
    _, body = _parse(error_response(status, "m", as_json=True))
    assert json.loads(body)["error"] == {
        "message": "m",
        "type": kind,
        "param": None,
        "code": status,
    }


def test_head_request_gets_the_head_and_no_body() -> None:
    head = _head((b"Accept", b"application/json"), method=b"HEAD")
    answer = answer_for(head, 503, "no ready replica", close=False, retry_after=1)
    full = error_response(503, "no ready replica", close=False, retry_after=1, as_json=True)
    assert full.startswith(answer) and answer.endswith(b"\r\n\r\n")
    response, body = _parse(answer, method="HEAD")
    assert body == b"" and int(_headers(response)[b"content-length"]) > 0


def test_answer_for_follows_the_request() -> None:
    as_json = answer_for(_head((b"Accept", b"application/json")), 504, "late")
    assert b"Content-Type: application/json\r\n" in as_json
    assert json.loads(as_json.partition(b"\r\n\r\n")[2])["error"]["code"] == 504
    text = answer_for(_head((b"Accept", b"text/html")), 504, "late")
    assert text == error_response(504, "late")


def test_no_head_is_text() -> None:
    assert answer_for(None, 431, "header section too large") == error_response(
        431, "header section too large"
    )


def test_answers_are_built_once() -> None:
    first = error_response(503, "shutting down", retry_after=1, as_json=True)
    assert error_response(503, "shutting down", retry_after=1, as_json=True) is first
