"""The model gateway's pure parts (issue 16): the `model` of a body and its rewrite, OpenAI's
error shape, the route table (canonical names, close names, the listing), the per-model
counters. The gateway with sockets: tests/integration/test_proxy_gateway.py."""

from __future__ import annotations

import json
import urllib.parse

import httpx
import pytest
import trio
import trio.testing

from proxy.endpoint import Endpoint
from proxy.gateway import errors
from proxy.gateway.model_field import (
    FORM,
    JSON,
    MULTIPART,
    Found,
    Missing,
    find_model,
    media_type,
    rewrite,
)
from proxy.gateway.routes import Route, RouteTable
from proxy.gateway.stats import ModelCounters, clamp_window

CT_JSON = b"application/json"


def multipart(fields: dict[str, str], file: bytes = b"") -> tuple[bytes, bytes]:
    """(Content-Type, body) as an OpenAI SDK (httpx) sends a form with a file."""
    request = httpx.Request(
        "POST", "http://x/", data=fields, files={"file": ("a.wav", file, "audio/wav")}
    )
    return request.headers["content-type"].encode(), request.read()


# --- the model of a body ----------------------------------------------------------------------


def test_json_model_and_a_rewrite_that_keeps_every_other_field() -> None:
    body = b'{"model": "llama", "temperature": 0.5, "messages": [{"role": "user"}], "x": null}'
    found = find_model(CT_JSON, body)
    assert isinstance(found, Found) and found.model == "llama" and found.kind == JSON
    out = rewrite(found, body, "meta/Llama-3")
    assert json.loads(out) == {**json.loads(body), "model": "meta/Llama-3"}
    assert list(json.loads(out)) == list(json.loads(body))  # the order kept


def test_json_is_assumed_whatever_the_content_type_says() -> None:
    for ct in (None, b"text/plain", b"application/json; charset=utf-8"):
        found = find_model(ct, b'{"model": "m"}')
        assert isinstance(found, Found) and found.model == "m", ct


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"", "no body"),
        (b"  \n", "no body"),
        (b"{", "not valid JSON"),
        (b"\xff\xfe{", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"llama"', "must be a JSON object"),
        (b'{"messages": []}', "must provide a model"),
        (b'{"model": null}', "must provide a model"),
        (b'{"model": 3}', "non-empty string"),
        (b'{"model": ""}', "non-empty string"),
        (b'{"model": ["a"]}', "non-empty string"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),  # too deep: RecursionError
    ],
)
def test_bodies_without_a_model_are_missing_with_why(body: bytes, why: str) -> None:
    found = find_model(CT_JSON, body)
    assert isinstance(found, Missing) and why in found.why, found


def test_multipart_model_field_found_and_rewritten_in_place() -> None:
    audio = bytes(range(256)) * 50 + b"\r\n--not-the-boundary\r\n"
    ct, body = multipart({"model": "whisper", "language": "en"}, audio)
    found = find_model(ct, body)
    assert isinstance(found, Found) and found.model == "whisper" and found.kind == MULTIPART
    out = rewrite(found, body, "openai/whisper-large-v3")
    again = find_model(ct, out)
    assert isinstance(again, Found) and again.model == "openai/whisper-large-v3"
    assert out.replace(b"openai/whisper-large-v3", b"whisper") == body
    assert audio in out


def test_multipart_model_after_the_file_and_quoted_boundaries() -> None:
    b = b"XyZ"
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n'
        b"data\r\n--XyZ\r\ncontent-disposition: form-data; name=model\r\n\r\nm1\r\n--XyZ--\r\n"
    )
    for ct in (b"multipart/form-data; boundary=XyZ", b'multipart/form-data; boundary="XyZ"'):
        found = find_model(ct, body)
        assert isinstance(found, Found) and found.model == "m1", ct
    assert media_type(b'Multipart/Form-Data; boundary="XyZ"') == ("multipart/form-data", b.decode())


@pytest.mark.parametrize(
    ("content_type", "body", "why"),
    [
        (b"multipart/form-data", b"--x\r\n", "needs a boundary"),
        (b"multipart/form-data; boundary=x", b"nothing here", "does not contain"),
        (
            b"multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="language"\r\n\r\nen\r\n--x--\r\n',
            "must provide a model",
        ),
        (
            b"multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="model"\r\n\r\nunterminated',
            "without its end",
        ),
        (
            b"multipart/form-data; boundary=x",
            b"--x\r\n" + b"H" * 10_000,
            "header section",
        ),
        (
            b"multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="model"\r\n\r\n\xff\r\n--x--',
            "not UTF-8",
        ),
    ],
)
def test_malformed_multipart_is_missing_with_why(
    content_type: bytes, body: bytes, why: str
) -> None:
    found = find_model(content_type, body)
    assert isinstance(found, Missing) and why in found.why, found


def test_multipart_parts_are_bounded() -> None:
    part = b'--x\r\nContent-Disposition: form-data; name="f"\r\n\r\nv\r\n'
    found = find_model(b"multipart/form-data; boundary=x", part * 1001 + b"--x--")
    assert isinstance(found, Missing) and "more than 1000 parts" in found.why


def test_urlencoded_model_and_its_rewrite() -> None:
    ct = b"application/x-www-form-urlencoded"
    body = b"prompt=a+b%26c&model=sd-xl&n=2"
    found = find_model(ct, body)
    assert isinstance(found, Found) and found.model == "sd-xl" and found.kind == FORM
    out = rewrite(found, body, "stabilityai/sdxl")
    assert urllib.parse.parse_qsl(out.decode()) == [
        ("prompt", "a b&c"),
        ("model", "stabilityai/sdxl"),
        ("n", "2"),
    ]
    assert isinstance(find_model(ct, b"prompt=x"), Missing)
    curl = find_model(ct, b'{"model": "m", "prompt": "a=b&c"}')  # curl -d: JSON labelled so
    assert isinstance(curl, Found) and curl.model == "m" and curl.kind == JSON
    assert isinstance(find_model(ct, b"model=\xff"), Missing)


# --- OpenAI's error shape ---------------------------------------------------------------------


def split(answer: bytes) -> tuple[bytes, dict[bytes, bytes], dict[str, object]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    fields = {n.lower(): v for n, _, v in (line.partition(b": ") for line in lines)}
    assert int(fields[b"content-length"]) == len(body)
    assert fields[b"content-type"] == b"application/json"
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return status, fields, error


def test_error_shapes() -> None:
    status, fields, e = split(errors.model_not_found("llama-4", ["llama3", "llama"], close=False))
    assert status == b"HTTP/1.1 404 Not Found" and b"connection" not in fields
    assert e == {
        "message": "The model 'llama-4' does not exist; close names: llama3, llama; "
        "GET /v1/models lists the models served here",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    _, _, e = split(errors.model_not_found("zzz", [], close=False))
    assert (
        e["message"]
        == "The model 'zzz' does not exist; GET /v1/models lists the models served here"
    )
    _, _, e = split(errors.model_not_found("m" * 100_000, [], close=False))
    assert len(str(e["message"])) < 300  # bounded
    status, fields, e = split(errors.too_large(1024))
    assert status == b"HTTP/1.1 413 Content Too Large" and fields[b"connection"] == b"close"
    assert e["code"] == "request_too_large" and "1024 bytes" in str(e["message"])
    status, _, e = split(errors.model_missing("you must provide a model parameter", close=True))
    assert status.startswith(b"HTTP/1.1 400 ") and e["param"] == "model"
    status, fields, e = split(
        errors.method_not_allowed(b"GET", b"/v1/embeddings", b"POST", close=False)
    )
    assert status.startswith(b"HTTP/1.1 405 ") and fields[b"allow"] == b"POST"
    _, _, e = split(errors.unknown_url(b"GET", b"/x" * 500, close=False))
    assert e["code"] == "unknown_url" and len(str(e["message"])) < 250  # bounded
    status, fields, e = split(errors.not_serving("d", close=False))
    assert status.startswith(b"HTTP/1.1 503 ") and fields[b"retry-after"] == b"1"


# --- the route table --------------------------------------------------------------------------


def table() -> RouteTable:
    a = Endpoint("a", bind="127.0.0.1", port=0)
    b = Endpoint("b", bind="127.0.0.1", port=0)
    llama = Route("llama-dep", a, canonical="llama-3.1-8b")
    qwen = Route("qwen-dep", b)  # no canonical: the first name that maps to it
    return RouteTable({"llama3.1": llama, "llama-3.1-8b": llama, "qwen": qwen, "qwen2": qwen})


def test_canonical_names_close_names_and_the_listing() -> None:
    t = table()
    routes = t.routes()
    assert [r.deployment for r in routes] == ["llama-dep", "qwen-dep"]
    assert [t.canonical(r) for r in routes] == ["llama-3.1-8b", "qwen"]
    assert t.close_names("llama3") == ["llama3.1", "llama-3.1-8b"]
    assert t.close_names("qwen-2")[0] == "qwen2"
    assert t.close_names("gpt-4o") == []
    # without case: the name that differs only in case first
    assert t.close_names("QWEN")[0] == "qwen"
    assert t.close_names("Llama-3.1-8B")[0] == "llama-3.1-8b"
    assert t.close_names("LLAMA3") == ["llama3.1", "llama-3.1-8b"]
    assert t.close_names("llama3" * 1000) == []
    listing = json.loads(t.listing(lambda deployment: deployment == "qwen-dep"))
    assert listing["object"] == "list"
    assert [(m["id"], m["canonical"], m["loaded"]) for m in listing["data"]] == [
        ("llama3.1", "llama-3.1-8b", False),
        ("llama-3.1-8b", "llama-3.1-8b", False),
        ("qwen", "qwen", True),
        ("qwen2", "qwen", True),
    ]
    assert all(m["owned_by"] == "berth" and m["object"] == "model" for m in listing["data"])


# --- per-model counters -----------------------------------------------------------------------


def test_ttft_is_recorded_for_2xx_only_and_the_window_is_clamped() -> None:
    async def main() -> None:
        c = ModelCounters("d")
        for status, first in ((200, 0.25), (503, 0.0), (200, None), (404, 0.001)):
            c.began()
            start = trio.current_time()
            await trio.sleep(0.5)
            c.finished(status, start, None if first is None else start + first)
        s = c.summary("m", 60.0, histogram=True)
        assert s.requests_total == 4 and s.in_flight == 0
        assert (s.status.s2xx, s.status.s4xx, s.status.s5xx) == (2, 1, 1)
        assert s.ttft.count == 1 and s.ttft.p50 == pytest.approx(0.25, rel=0.1)
        assert s.latency.count == 4 and s.last_request_at == trio.current_time()
        assert s.ttft_histogram is not None and s.ttft_histogram.count == 1

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert clamp_window(0.5) == 1.0 and clamp_window(600) == 60.0
    with pytest.raises(ValueError):
        clamp_window(0)
