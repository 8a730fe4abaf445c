"""The model gateway (issue 16) with real sockets on 127.0.0.1: two real backends behind two
real Endpoints, a `Gateway` in front routing by `model`.

Each backend is a small HTTP/1.1 server (h11) that records every request (path, header
fields, body) and answers by the body's `do`: echo (the default; its name and what it
got), `sse` (one event, then the next only once the test releases it), `generate` (a long
generation with nothing sent: it notes when the proxy cuts it), `stall` (a stream that
stops after its first event: it notes the cut too). Every wait is bounded
(WAIT); the tests synchronise on events and on what the endpoints report.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import h11
import httpx
import openai
import pytest
import trio
import trustme

from proxy.auth import Credentials, hash_key
from proxy.endpoint import Endpoint, EndpointTimeouts
from proxy.gateway import Gateway, Route
from proxy.tls import server_context
from proxy.upstreams import Upstream
from tests.integration.test_proxy_endpoint import Client, listening, read_request

WAIT = 10.0


@dataclass
class Seen:
    method: bytes
    path: bytes
    headers: dict[bytes, bytes]
    body: bytes


@dataclass
class ModelServer:
    name: str
    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    active: int = 0
    most: int = 0
    release: trio.Event = field(default_factory=trio.Event)
    arrived: trio.Event = field(default_factory=trio.Event)
    cut: trio.Event = field(default_factory=trio.Event)
    hold: float = 0.0  # each echo waits this long (a generation's time)
    stall_all: bool = False  # every request is a `generate` (nothing sent until cut)
    openai: bool = False  # chat requests get OpenAI's shapes (streamed: two chunks)

    @property
    def upstream(self) -> Upstream:
        return Upstream(self.name, "127.0.0.1", self.port)

    async def handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            try:
                await self._serve(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async def _serve(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            got = await read_request(conn, stream)
            if got is None:
                return
            request, body = got
            headers = {n.lower(): v for n, v in request.headers.raw_items()}
            self.seen.append(Seen(request.method, request.target, headers, body))
            self.arrived.set()
            self.active += 1
            self.most = max(self.most, self.active)
            try:
                if not await self._respond(stream, conn, body):
                    return
            finally:
                self.active -= 1
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()

    async def _respond(self, stream: trio.SocketStream, conn: h11.Connection, body: bytes) -> bool:
        async def send(*events: h11.Event) -> None:
            for e in events:
                data = conn.send(e)
                if data:
                    await stream.send_all(data)

        try:
            request = json.loads(body)
            do = request.get("do", "openai" if "messages" in request and self.openai else "echo")
        except ValueError:
            do = "echo"  # multipart, form
        if self.stall_all:
            do = "generate"
        if do == "openai":
            return await self._openai(send, request)
        if do == "stall":
            await send(
                h11.Response(status_code=200, headers=[("Content-Type", "text/event-stream")])
            )
            await send(h11.Data(data=b"data: first\n\n"))
            do = "generate"  # and then nothing, until the proxy cuts it
        if do == "sse":
            await send(
                h11.Response(status_code=200, headers=[("Content-Type", "text/event-stream")])
            )
            await send(h11.Data(data=b"data: first\n\n"))
            with trio.fail_after(WAIT):
                await self.release.wait()
            await send(h11.Data(data=b"data: [DONE]\n\n"), h11.EndOfMessage())
            return True
        if do == "generate":
            with trio.move_on_after(WAIT):
                try:
                    while await stream.receive_some(65536):
                        pass
                except trio.BrokenResourceError:
                    pass
                self.cut.set()
            return False
        if self.hold:
            await trio.sleep(self.hold)
        payload = json.dumps({"server": self.name, "length": len(body)}).encode()
        await send(
            h11.Response(
                status_code=200,
                headers=[
                    ("Content-Type", "application/json"),
                    ("Content-Length", str(len(payload))),
                ],
            ),
            h11.Data(data=payload),
            h11.EndOfMessage(),
        )
        return True

    async def _openai(self, send: Callable[..., Awaitable[None]], request: dict[str, Any]) -> bool:
        """OpenAI's chat completion, as a model server answers it: whole, or streamed as two
        chunks (the second once the test releases it) and [DONE]."""
        model = request["model"]
        if not request.get("stream"):
            message = {"role": "assistant", "content": f"{self.name} says hi"}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            payload = json.dumps(
                {"id": "c1", "object": "chat.completion", "created": 0, "model": model,
                 "choices": [choice]}
            ).encode()  # fmt: skip
            headers = [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
            await send(h11.Response(status_code=200, headers=headers), h11.Data(data=payload))
            await send(h11.EndOfMessage())
            return True

        def event(content: str) -> bytes:
            choice = {"index": 0, "delta": {"content": content}, "finish_reason": None}
            chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 0,
                     "model": model, "choices": [choice]}  # fmt: skip
            return b"data: " + json.dumps(chunk).encode() + b"\n\n"

        await send(h11.Response(status_code=200, headers=[("Content-Type", "text/event-stream")]))
        await send(h11.Data(data=event("one ")))
        with trio.fail_after(WAIT):
            await self.release.wait()
        await send(h11.Data(data=event("two")), h11.Data(data=b"data: [DONE]\n\n"))
        await send(h11.EndOfMessage())
        return True


@asynccontextmanager
async def servers(*names: str) -> AsyncIterator[list[ModelServer]]:
    async with listening([ModelServer(name) for name in names]) as out:
        yield out


@asynccontextmanager
async def endpoints(
    *upstreams: list[Upstream], timeouts: EndpointTimeouts | None = None
) -> AsyncIterator[list[Endpoint]]:
    async with trio.open_nursery() as nursery:
        out = []
        for i, ups in enumerate(upstreams):
            ep = Endpoint(
                f"dep{i}", bind="127.0.0.1", port=0, timeouts=timeouts or EndpointTimeouts()
            )
            ep.set_upstreams(ups)
            await nursery.start(ep.run)
            out.append(ep)
        yield out
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def gateway(
    routes: dict[str, Route], *, max_body: int = 1 << 20, timeouts: EndpointTimeouts | None = None
) -> AsyncIterator[Gateway]:
    g = Gateway(max_body=max_body, timeouts=timeouts or EndpointTimeouts(), listen=("127.0.0.1", 0))
    g.set_routes(routes)
    async with trio.open_nursery() as nursery:
        await nursery.start(g.run)
        yield g
        nursery.cancel_scope.cancel()


POINTER = "; GET /v1/models lists the models served here"


def two_models(a: Endpoint, b: Endpoint) -> dict[str, Route]:
    """llama (alias llama3) on a; qwen on b, whose server expects another name."""
    llama = Route("llama-dep", a, canonical="llama")
    qwen = Route("qwen-dep", b, rewrite_model="Qwen/Qwen2.5-7B", canonical="qwen")
    return {"llama": llama, "llama3": llama, "qwen": qwen}


def http(g: Gateway) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{g.address[1]}", timeout=WAIT)


def chat(model: str, **extra: object) -> bytes:
    return json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    ).encode()


def error_of(reply: httpx.Response | bytes) -> dict[str, object]:
    body = reply.content if isinstance(reply, httpx.Response) else reply
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    return error  # type: ignore[no-any-return]


async def until(condition: Callable[[], bool]) -> None:
    with trio.fail_after(WAIT):
        while not condition():  # noqa: ASYNC110 - the state of several parts
            await trio.sleep(0.005)


# --- routing ---------------------------------------------------------------------------------


async def test_routes_by_model_and_alias_on_one_kept_alive_connection() -> None:
    async with servers("a", "b") as (a, b), endpoints([a.upstream], [b.upstream]) as (ea, eb):
        async with gateway(two_models(ea, eb)) as g, Client.open(g.address[1]) as c:
            ct = [("Content-Type", "application/json")]
            replies = [
                await c.request("POST", "/v1/chat/completions", chat(m), headers=ct)
                for m in ("llama", "qwen", "llama3", "qwen")
            ]
        assert [r.status for r in replies] == [200] * 4
        assert [json.loads(r.body)["server"] for r in replies] == ["a", "b", "a", "b"]
        assert len(a.seen) == 2 and len(b.seen) == 2
        assert ea.statistics().requests_total == 2 and eb.statistics().requests_total == 2


async def test_body_goes_byte_for_byte_without_a_rewrite_and_rewritten_with_one() -> None:
    async with servers("a", "b") as (a, b), endpoints([a.upstream], [b.upstream]) as (ea, eb):
        async with gateway(two_models(ea, eb)) as g, http(g) as client:
            odd = b'{ "model" :"llama3",  "n": 1.50, "text": "caf\\u00e9 \xc3\xa9", "x": [1,2] }'
            r1 = await client.post("/v1/completions", content=odd)
            body = {"model": "qwen", "temperature": 0.25, "text": "caf\u00e9", "stream": False}
            r2 = await client.post("/v1/completions?x=1", json=body)
        assert r1.status_code == r2.status_code == 200
        assert a.seen[0].body == odd  # not re-encoded
        assert a.seen[0].path == b"/v1/completions"
        got = json.loads(b.seen[0].body)
        assert got == {**body, "model": "Qwen/Qwen2.5-7B"}
        assert int(b.seen[0].headers[b"content-length"]) == len(b.seen[0].body)
        assert b.seen[0].path == b"/v1/completions?x=1"


async def test_a_chunked_body_is_read_whole_and_sent_with_a_content_length() -> None:
    async with servers("a", "b") as (a, b), endpoints([a.upstream], [b.upstream]) as (ea, eb):
        async with gateway(two_models(ea, eb)) as g, http(g) as client:

            async def pieces() -> AsyncIterator[bytes]:
                yield b'{"model": "llama", '
                yield b'"prompt": "' + b"p" * 100_000 + b'"}'

            r = await client.post("/v1/completions", content=pieces())
        assert r.status_code == 200
        assert a.seen[0].headers[b"content-length"] == str(len(a.seen[0].body)).encode()
        assert b"transfer-encoding" not in a.seen[0].headers
        assert json.loads(a.seen[0].body)["prompt"] == "p" * 100_000


async def test_sse_streams_back_an_event_before_the_next_is_sent() -> None:
    async with servers("a", "b") as (a, b), endpoints([a.upstream], [b.upstream]) as (ea, eb):
        async with gateway(two_models(ea, eb)) as g, Client.open(g.address[1]) as c:
            with trio.fail_after(WAIT):
                await c.send_request("POST", "/v1/chat/completions", chat("qwen", do="sse"))
                head = await c.read_head()
                first = await c._next()
            assert head.status_code == 200
            assert dict(head.headers)[b"content-type"] == b"text/event-stream"
            assert isinstance(first, h11.Data) and first.data == b"data: first\n\n"
            b.release.set()  # the server sends the rest only now
            with trio.fail_after(WAIT):
                assert await c.read_body() == b"data: [DONE]\n\n"
            again = await c.request("POST", "/v1/embeddings", chat("llama"))  # same connection
            assert again.status == 200 and json.loads(again.body)["server"] == "a"
        stats = g.statistics()
        assert stats["qwen"].ttft.count == 1 and stats["qwen"].status.s2xx == 1


async def test_multipart_model_field_routes_and_is_rewritten() -> None:
    async with servers("a", "b") as (a, b), endpoints([a.upstream], [b.upstream]) as (ea, eb):
        async with gateway(two_models(ea, eb)) as g, http(g) as client:
            audio = bytes(range(256)) * 400  # binary, CRLFs and dashes included
            files = {"file": ("a.wav", audio, "audio/wav")}
            r1 = await client.post(
                "/v1/audio/transcriptions", data={"model": "llama3"}, files=files
            )
            r2 = await client.post("/v1/audio/transcriptions", data={"model": "qwen"}, files=files)
            r3 = await client.post("/v1/audio/transcriptions", data={"language": "en"}, files=files)
            r4 = await client.post("/v1/images/generations", data={"model": "llama", "n": "1"})
        assert r1.status_code == r2.status_code == r4.status_code == 200
        assert audio in a.seen[0].body and audio in b.seen[0].body
        assert b'name="model"\r\n\r\nllama3\r\n' in a.seen[0].body
        assert b'name="model"\r\n\r\nQwen/Qwen2.5-7B\r\n' in b.seen[0].body
        assert int(b.seen[0].headers[b"content-length"]) == len(b.seen[0].body)
        assert r3.status_code == 400 and error_of(r3)["param"] == "model"
        assert a.seen[1].body == b"model=llama&n=1"  # urlencoded, unchanged


# --- the gateway's own answers -----------------------------------------------------------------


async def test_unknown_model_404_with_close_names_missing_model_400_over_max_body_413() -> None:
    async with servers("a", "b") as (a, b), endpoints([a.upstream], [b.upstream]) as (ea, eb):
        async with (
            gateway(two_models(ea, eb), max_body=10_000) as g,
            Client.open(g.address[1]) as c,
        ):
            unknown = await c.request("POST", "/v1/chat/completions", chat("llama-3"))
            no_model = await c.request("POST", "/v1/chat/completions", b'{"messages": []}')
            not_json = await c.request("POST", "/v1/chat/completions", b"model=llama{")
            not_object = await c.request("POST", "/v1/chat/completions", b'["llama"]')
            bad_type = await c.request("POST", "/v1/chat/completions", b'{"model": 3}')
            no_body = await c.request("POST", "/v1/chat/completions")
            ok = await c.request("POST", "/v1/chat/completions", chat("llama"))  # still open
            too_big = await c.request("POST", "/v1/chat/completions", chat("llama", p="x" * 20_000))
        assert unknown.status == 404
        e = error_of(unknown.body)
        assert e["code"] == "model_not_found" and e["param"] == "model"
        assert e["type"] == "invalid_request_error"
        assert e["message"] == (
            "The model 'llama-3' does not exist; close names: llama3, llama" + POINTER
        )
        for r in (no_model, not_json, not_object, bad_type, no_body):
            assert r.status == 400, r
            assert error_of(r.body)["param"] == "model"
        assert "not valid JSON" in str(error_of(not_json.body)["message"])
        assert ok.status == 200
        assert too_big.status == 413 and too_big.headers["connection"] == "close"
        assert error_of(too_big.body)["code"] == "request_too_large"
        assert len(a.seen) == 1 and not b.seen  # nothing else reached a server
        assert g.refused() == {400: 5, 404: 1, 413: 1}


async def test_a_chunked_body_over_max_body_is_413_and_nothing_forwarded() -> None:
    async with servers("a", "b") as (a, b), endpoints([a.upstream], [b.upstream]) as (ea, eb):
        async with gateway(two_models(ea, eb), max_body=1000) as g, http(g) as client:

            async def pieces() -> AsyncIterator[bytes]:
                for _ in range(5):
                    yield b'{"model": "llama", "p": "' + b"x" * 400

            r = await client.post("/v1/completions", content=pieces())
        assert r.status_code == 413 and not a.seen


async def test_other_paths_404_and_wrong_methods_405() -> None:
    async with servers("a", "b") as (a, b), endpoints([a.upstream], [b.upstream]) as (ea, eb):
        async with gateway(two_models(ea, eb)) as g, Client.open(g.address[1]) as c:
            root = await c.request("GET", "/")
            get_chat = await c.request("GET", "/v1/chat/completions")
            post_models = await c.request("POST", "/v1/models", b"{}")
            get_other = await c.request("GET", "/v1/files")
            after = await c.request("GET", "/v1/models")
        assert root.status == 404 and error_of(root.body)["code"] == "unknown_url"
        assert get_chat.status == 405 and get_chat.headers["allow"] == "POST"
        assert post_models.status == 405 and post_models.headers["allow"] == "GET"
        assert get_other.status == 404
        assert after.status == 200  # the connection carried every one of them
        assert not a.seen and not b.seen


async def test_models_listing_with_loaded_and_deployment() -> None:
    async with servers("a", "b") as (a, b), endpoints([a.upstream], []) as (ea, eb):
        async with gateway(two_models(ea, eb)) as g, http(g) as client:
            default = (await client.get("/v1/models")).json()
            loaded = {"llama-dep": False, "qwen-dep": True}
            g.set_loaded(loaded.__getitem__)
            told = (await client.get("/v1/models")).json()
            one = await client.get("/v1/models/llama3")
            missing = await client.get("/v1/models/llama-4")
            far = await client.get("/v1/models/gpt-4o")
            cased = await client.post("/v1/chat/completions", content=chat("LLAMA3"))
        assert default["object"] == "list"
        assert [m["id"] for m in default["data"]] == ["llama", "llama3", "qwen"]
        first = default["data"][0]
        assert first == {
            "id": "llama",
            "object": "model",
            "created": 0,
            "owned_by": "berth",
            "deployment": "llama-dep",
            "canonical": "llama",
            "loaded": True,  # its endpoint has an upstream
        }
        assert [m["loaded"] for m in default["data"]] == [True, True, False]
        assert [m["loaded"] for m in told["data"]] == [False, False, True]
        assert [m["canonical"] for m in told["data"]] == ["llama", "llama", "qwen"]
        assert one.status_code == 200 and one.json()["deployment"] == "llama-dep"
        assert missing.status_code == 404 and error_of(missing)["code"] == "model_not_found"
        # models.retrieve gets the close names a POST gets, and the pointer to the listing
        assert error_of(missing)["message"] == (
            "The model 'llama-4' does not exist; close names: llama, llama3" + POINTER
        )
        assert far.status_code == 404
        assert error_of(far)["message"] == "The model 'gpt-4o' does not exist" + POINTER
        assert cased.status_code == 404  # names are matched as written, but told without case
        assert str(error_of(cased)["message"]).startswith(
            "The model 'LLAMA3' does not exist; close names: llama3, "
        )


async def test_new_routes_apply_to_the_next_request_on_an_open_connection() -> None:
    async with servers("a", "b") as (a, b), endpoints([a.upstream], [b.upstream]) as (ea, eb):
        async with gateway(two_models(ea, eb)) as g, Client.open(g.address[1]) as c:
            before = await c.request("POST", "/v1/chat/completions", chat("mistral"))
            g.set_routes({**two_models(ea, eb), "mistral": Route("m-dep", eb)})
            after = await c.request("POST", "/v1/chat/completions", chat("mistral"))
        assert before.status == 404 and after.status == 200
        assert json.loads(b.seen[0].body)["model"] == "mistral"
        assert set(g.statistics()) == {"llama", "qwen", "mistral"}


# --- through the endpoint's own rules --------------------------------------------------------


async def test_a_request_for_an_empty_deployment_is_held_counted_and_served_when_it_comes() -> None:
    async with servers("a", "b") as (a, b), endpoints([a.upstream], []) as (ea, eb):
        woken: list[int] = []
        eb.hold_when_empty(WAIT, on_wait=lambda: woken.append(eb.waiting()))
        async with gateway(two_models(ea, eb)) as g, http(g) as client:
            async with trio.open_nursery() as nursery:
                got: list[httpx.Response] = []

                async def ask() -> None:
                    got.append(await client.post("/v1/chat/completions", content=chat("qwen")))

                nursery.start_soon(ask)
                await until(lambda: eb.waiting() == 1)  # the autoscaler's scale-from-zero signal
                assert woken and not b.seen
                assert g.statistics()["qwen"].in_flight == 1
                eb.set_upstreams([b.upstream])  # a replica is ready
        assert got[0].status_code == 200 and got[0].json()["server"] == "b"
        assert eb.waiting() == 0 and eb.statistics().queued_total == 1


async def test_a_client_that_hangs_up_while_held_leaves_the_queue_at_once() -> None:
    async with servers("a", "b") as (a, b), endpoints([a.upstream], []) as (ea, eb):
        eb.hold_when_empty(WAIT)
        async with gateway(two_models(ea, eb)) as g:
            with trio.fail_after(WAIT):
                stream = await trio.open_tcp_stream("127.0.0.1", g.address[1])
                body = chat("qwen")
                await stream.send_all(
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\nContent-Length: %d\r\n\r\n"
                    % len(body)
                    + body
                )
                await until(lambda: eb.waiting() == 1)
                await stream.aclose()
            with trio.fail_after(2.0):
                await until(lambda: eb.waiting() == 0)
            await until(lambda: g.statistics()["qwen"].in_flight == 0)
            assert g.statistics()["qwen"].status.s4xx == 1  # recorded as 499
        assert not b.seen


async def test_a_client_that_hangs_up_while_the_replica_works_cuts_the_replica() -> None:
    async with servers("a", "b") as (a, b), endpoints([a.upstream], [b.upstream]) as (ea, eb):
        async with gateway(two_models(ea, eb)) as g:
            with trio.fail_after(WAIT):
                stream = await trio.open_tcp_stream("127.0.0.1", g.address[1])
                body = chat("llama", do="generate")
                await stream.send_all(
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\nContent-Length: %d\r\n\r\n"
                    % len(body)
                    + body
                )
                await a.arrived.wait()
                await stream.aclose()  # the user stops the generation
            with trio.fail_after(2.0):
                await a.cut.wait()  # seen at once, though the replica sent nothing
            await until(lambda: ea.statistics().in_flight == 0)


# --- faults at the replica, seen through the gateway ----------------------------------------


async def test_a_stream_that_stalls_is_cut_after_read_idle_while_other_models_answer() -> None:
    quick = EndpointTimeouts(read_idle=0.5)
    async with servers("a", "b") as (a, b):
        async with endpoints([a.upstream], [b.upstream], timeouts=quick) as (ea, eb):
            async with gateway(two_models(ea, eb)) as g, Client.open(g.address[1]) as c:
                with trio.fail_after(WAIT):
                    await c.send_request("POST", "/v1/chat/completions", chat("qwen", do="stall"))
                    head = await c.read_head()
                    first = await c._next()
                assert head.status_code == 200
                assert isinstance(first, h11.Data) and first.data == b"data: first\n\n"
                stalled_at = trio.current_time()
                async with http(g) as other:  # meanwhile, the other model answers
                    r = await other.post("/v1/chat/completions", content=chat("llama"))
                assert r.status_code == 200 and r.json()["server"] == "a"
                # The stream ends without its last chunk (a reset): a cut, not an end.
                cut = (h11.RemoteProtocolError, trio.BrokenResourceError)
                with trio.fail_after(WAIT), pytest.raises(cut):
                    await c.read_body()
                assert trio.current_time() - stalled_at >= quick.read_idle - 0.05
                with trio.fail_after(2.0):
                    await b.cut.wait()  # the replica's connection is closed too
            await until(lambda: eb.statistics().in_flight == 0)
            assert ea.statistics().status.s2xx == 1


async def test_a_replica_that_never_answers_is_504_then_ejected_and_its_model_keeps_serving() -> (
    None
):
    quick = EndpointTimeouts(read_idle=0.3)
    async with servers("hung", "ok", "b") as (hung, ok, b):
        hung.stall_all = True
        async with endpoints([hung.upstream, ok.upstream], [b.upstream], timeouts=quick) as (
            ea,
            eb,
        ):
            async with gateway(two_models(ea, eb)) as g, http(g) as client:
                replies = [
                    await client.post("/v1/chat/completions", content=chat("llama"))
                    for _ in range(12)
                ]
        # Round robin sends every other request to the hung replica until its third
        # timeout (outlier.failures = 3) ejects it; the healthy one serves the rest.
        statuses = [r.status_code for r in replies]
        assert statuses.count(504) == 3, statuses
        assert {r.json()["server"] for r in replies if r.status_code == 200} == {"ok"}
        assert len(ok.seen) == 9 and len(hung.seen) == 3
        assert ea.ejected() == frozenset({"hung"})
        assert len(b.seen) == 0  # the other deployment never saw any of it


async def test_a_burst_of_6_at_max_concurrency_2_queues_and_answers_all() -> None:
    async with servers("a", "b") as (a, b), endpoints([a.upstream], [b.upstream]) as (ea, eb):
        ea.set_admission(max_concurrency=2, max_queue=10, queue_timeout=WAIT)
        a.hold = 0.2
        async with gateway(two_models(ea, eb)) as g, http(g) as client:
            got: list[int] = []

            async def ask() -> None:
                r = await client.post("/v1/chat/completions", content=chat("llama"))
                got.append(r.status_code)

            with trio.fail_after(WAIT):
                async with trio.open_nursery() as nursery:
                    for _ in range(6):
                        nursery.start_soon(ask)
                    await until(lambda: ea.waiting() > 0)  # some of them did queue
        assert got == [200] * 6 and a.most == 2
        assert ea.statistics().queued_total >= 4
        assert g.statistics()["llama"].status.s2xx == 6


# --- credentials, TLS, drain ------------------------------------------------------------------

KEY = "bk_" + "g" * 43


async def test_the_gateways_credentials_401_in_openai_shape_and_the_key_is_not_forwarded() -> None:
    async with servers("a", "b") as (a, b), endpoints([a.upstream], [b.upstream]) as (ea, eb):
        # The deployment's endpoint has keys of its own: the gateway's judged the request.
        ea.set_credentials(Credentials(keys={"key:ep": hash_key(b"bk_" + b"e" * 43)}))
        async with gateway(two_models(ea, eb)) as g, Client.open(g.address[1]) as c:
            g.set_credentials(Credentials(keys={"key:gw": hash_key(KEY.encode())}))
            js = [("Content-Type", "application/json"), ("Accept", "application/json")]
            missing = await c.request("POST", "/v1/chat/completions", chat("llama"), headers=js)
            wrong = await c.request(
                "GET", "/v1/models", headers=[*js, ("Authorization", "Bearer nope")]
            )
            plain = await c.request("POST", "/v1/chat/completions", chat("llama"))
            head = await c.request("HEAD", "/v1/models")
            right = await c.request(
                "POST", "/v1/chat/completions", chat("llama"),
                headers=[*js, ("Authorization", f"Bearer {KEY}")],
            )  # fmt: skip
        assert missing.status == wrong.status == plain.status == head.status == 401
        # OpenAI's shape and code, JSON to a client that did not ask for it too
        for answer, message in (
            (
                missing,
                "authentication required: send Authorization: Bearer KEY (or x-api-key: KEY)",
            ),
            (wrong, "invalid credentials"),
            (plain, "authentication required: send Authorization: Bearer KEY (or x-api-key: KEY)"),
        ):
            assert answer.headers["content-type"] == "application/json"
            assert json.loads(answer.body) == {
                "error": {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_api_key",
                }
            }
        assert head.body == b""
        assert missing.headers["www-authenticate"] == 'Bearer realm="berth"'
        assert wrong.headers["www-authenticate"] == 'Bearer realm="berth", error="invalid_token"'
        assert right.status == 200 and len(a.seen) == 1
        assert b"authorization" not in a.seen[0].headers
        assert g.unauthorized() == 4


async def test_tls_clients_are_routed_too() -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    context = server_context(
        cert.private_key_and_cert_chain_pem.bytes(), cert.private_key_pem.bytes()
    )
    trust = ssl.create_default_context()
    ca.configure_trust(trust)
    async with servers("a", "b") as (a, b), endpoints([a.upstream], [b.upstream]) as (ea, eb):
        async with gateway(two_models(ea, eb)) as g:
            g.set_tls(context)
            url = f"https://localhost:{g.address[1]}"
            async with httpx.AsyncClient(base_url=url, verify=trust, timeout=WAIT) as client:
                r1 = await client.post("/v1/chat/completions", content=chat("qwen"))
                r2 = await client.get("/v1/models")
        assert r1.status_code == 200 and r1.json()["server"] == "b"
        assert r2.status_code == 200
        assert b.seen[0].headers[b"x-forwarded-proto"] == b"https"


async def test_begin_shutdown_finishes_the_request_under_way_and_stops_accepting() -> None:
    async with servers("a", "b") as (a, b), endpoints([a.upstream], [b.upstream]) as (ea, eb):
        a.hold = 0.3
        g = Gateway(max_body=1 << 20, timeouts=EndpointTimeouts(), listen=("127.0.0.1", 0))
        g.set_routes(two_models(ea, eb))
        got: list[int] = []
        closes: list[str] = []
        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                await nursery.start(g.run)
                port = g.address[1]

                async def ask() -> None:
                    async with httpx.AsyncClient(timeout=WAIT) as client:
                        r = await client.post(
                            f"http://127.0.0.1:{port}/v1/chat/completions", content=chat("llama")
                        )
                        got.append(r.status_code)
                        closes.append(r.headers.get("connection", ""))

                nursery.start_soon(ask)
                await a.arrived.wait()
                g.begin_shutdown(WAIT)
                await g.wait_listener_closed()
            # run returned: after the request under way was answered
        assert got == [200] and closes == ["close"]


# --- edges ----------------------------------------------------------------------------------


async def test_expect_100_continue_is_answered_by_the_gateway_and_not_forwarded() -> None:
    async with servers("a", "b") as (a, b), endpoints([a.upstream], [b.upstream]) as (ea, eb):
        async with gateway(two_models(ea, eb)) as g:
            body = chat("llama")
            with trio.fail_after(WAIT):
                stream = await trio.open_tcp_stream("127.0.0.1", g.address[1])
                async with stream:
                    await stream.send_all(
                        b"POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\n"
                        b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
                    )
                    interim = await stream.receive_some(65536)
                    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"  # before any body byte
                    await stream.send_all(body)
                    out = b""
                    while b'"server"' not in out:
                        out += await stream.receive_some(65536)
        assert out.startswith(b"HTTP/1.1 200 ")
        assert b"100 Continue" not in out  # the server was not asked for another
        assert b"expect" not in a.seen[0].headers


async def test_pipelined_requests_for_two_models_are_answered_in_order() -> None:
    async with servers("a", "b") as (a, b), endpoints([a.upstream], [b.upstream]) as (ea, eb):
        async with gateway(two_models(ea, eb)) as g:
            one, two = chat("qwen"), chat("llama")
            raw = b"".join(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body)
                for body in (one, two)
            )
            with trio.fail_after(WAIT):
                stream = await trio.open_tcp_stream("127.0.0.1", g.address[1])
                async with stream:
                    await stream.send_all(raw)
                    out = b""
                    while out.count(b'"server"') < 2:
                        out += await stream.receive_some(65536)
        assert out.index(b'"server": "b"') < out.index(b'"server": "a"')
        assert (
            b.seen[0].body
            == json.dumps(
                {**json.loads(one), "model": "Qwen/Qwen2.5-7B"}, separators=(",", ":")
            ).encode()
        )
        assert a.seen[0].body == two


@pytest.mark.parametrize("do", ["generate", "sse"])
async def test_a_stopped_endpoint_is_503_and_one_stopping_under_a_request_ends_it_cleanly(
    do: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with servers("a", "b") as (a, b), endpoints([b.upstream]) as (eb,):
        ea = Endpoint("a", bind="127.0.0.1", port=0)
        ea.set_upstreams([a.upstream])
        async with gateway(two_models(ea, eb)) as g, http(g) as client:
            stopped = await client.post("/v1/chat/completions", content=chat("llama"))
            underway, done = trio.Event(), trio.Event()
            got = b""
            async with trio.open_nursery() as nursery:
                await nursery.start(ea.run)

                async def ask() -> None:
                    nonlocal got
                    with trio.fail_after(WAIT):
                        stream = await trio.open_tcp_stream("127.0.0.1", g.address[1])
                        async with stream:
                            body = chat("llama", do=do)
                            await stream.send_all(
                                b"POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\n"
                                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                            )
                            if do == "sse":
                                while b"data: first" not in got:
                                    got += await stream.receive_some(65536)
                            else:
                                await a.arrived.wait()
                            underway.set()
                            try:
                                while data := await stream.receive_some(65536):
                                    got += data
                            except trio.BrokenResourceError:
                                pass  # cut with a reset: mid-body
                    done.set()

                nursery.start_soon(ask)
                with trio.fail_after(WAIT):
                    await underway.wait()
                ea.begin_shutdown(0.0)  # the endpoint stops (the deployment deleted)
                with trio.fail_after(WAIT):
                    await done.wait()  # the client saw its connection end
                nursery.cancel_scope.cancel()
            other = await client.post("/v1/chat/completions", content=chat("qwen"))
        assert b"[DONE]" not in got
        assert stopped.status_code == 503 and error_of(stopped)["code"] == "unavailable"
        assert stopped.headers["retry-after"] == "1"
        assert other.status_code == 200
        assert not [r for r in caplog.records if "failed" in r.getMessage()], caplog.records


async def test_an_endpoint_that_drains_finishes_a_gateway_stream_before_it_stops() -> None:
    async with servers("a", "b") as (a, b), endpoints([b.upstream]) as (eb,):
        ea = Endpoint("a", bind="127.0.0.1", port=0)
        ea.set_upstreams([a.upstream])
        stopped = trio.Event()

        async def run_a(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            await ea.run(task_status=task_status)
            stopped.set()

        async with gateway(two_models(ea, eb)) as g, trio.open_nursery() as nursery:
            await nursery.start(run_a)
            with trio.fail_after(WAIT):
                stream = await trio.open_tcp_stream("127.0.0.1", g.address[1])
                async with stream:
                    body = chat("llama", do="sse")
                    await stream.send_all(
                        b"POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                    )
                    got = b""
                    while b"data: first" not in got:
                        got += await stream.receive_some(65536)
                    ea.begin_shutdown(WAIT)  # a planned restart: its own sessions are none
                    await ea.wait_listener_closed()
                    await trio.sleep(0.2)  # what the endpoint would need to stop, were it to
                    assert not stopped.is_set()  # it waits for the gateway's stream
                    a.release.set()
                    while b"[DONE]" not in got:
                        got += await stream.receive_some(65536)
                    await stopped.wait()  # and stops once that ended
        assert got.startswith(b"HTTP/1.1 200 ")


async def test_slow_heads_and_bodies_are_408() -> None:
    timeouts = EndpointTimeouts(header_read=0.3, body_min_rate=1000.0, body_rate_window=0.3)
    async with servers("a", "b") as (a, b), endpoints([a.upstream], [b.upstream]) as (ea, eb):
        async with gateway(two_models(ea, eb), timeouts=timeouts) as g:
            port = g.address[1]
            with trio.fail_after(WAIT):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                async with stream:
                    await stream.send_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost:")
                    head_out = await stream.receive_some(65536)
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                async with stream:
                    await stream.send_all(
                        b"POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\n"
                        b'Content-Length: 1000\r\n\r\n{"model": "llama"'
                    )
                    body_out = await stream.receive_some(65536)
        assert head_out.startswith(b"HTTP/1.1 408 ")
        assert body_out.startswith(b"HTTP/1.1 408 ") and b'"error"' in body_out
        assert not a.seen


# --- the OpenAI SDK ----------------------------------------------------------------------------


async def test_the_openai_sdk_lists_chats_streams_and_gets_not_found() -> None:
    async with servers("a", "b") as (a, b), endpoints([a.upstream], [b.upstream]) as (ea, eb):
        a.openai = b.openai = True
        async with gateway(two_models(ea, eb)) as g:
            base = f"http://127.0.0.1:{g.address[1]}/v1"

            def use_the_sdk() -> dict[str, object]:
                sdk = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=WAIT)
                out: dict[str, object] = {}
                out["models"] = [m.id for m in sdk.models.list()]
                hi = [{"role": "user", "content": "hi"}]
                whole = sdk.chat.completions.create(model="llama3", messages=hi)
                out["whole"] = whole.choices[0].message.content
                stream = sdk.chat.completions.create(model="qwen", messages=hi, stream=True)
                chunks = iter(stream)
                first = next(chunks).choices[0].delta.content
                trio.from_thread.run_sync(b.release.set)  # the server sends the rest only now
                out["streamed"] = [first, *(c.choices[0].delta.content for c in chunks)]
                try:
                    sdk.chat.completions.create(model="llama-3", messages=hi)
                except openai.NotFoundError as exc:
                    out["not_found"] = (exc.status_code, exc.code, exc.param)
                return out

            with trio.fail_after(WAIT):
                got = await trio.to_thread.run_sync(use_the_sdk)
        assert got["models"] == ["llama", "llama3", "qwen"]
        assert got["whole"] == "a says hi"
        assert got["streamed"] == ["one ", "two"]
        assert got["not_found"] == (404, "model_not_found", "model")
        assert json.loads(b.seen[0].body)["model"] == "Qwen/Qwen2.5-7B"
