"""HTTP/2 at the endpoint (issue 14, point 5), over real loopback sockets, the `h2` library
as the client (tests/h2_client.py) and test_proxy_endpoint's HTTP/1.1 Backend as replicas:
prior knowledge, the h2c upgrade, ALPN h2 over TLS (trustme), per-request balancing, flow
control with bodies larger than every window, a client's RST_STREAM cutting the replica's
request, GOAWAY on drain and on idle, the preface bound and bad frames.

Every wait is bounded (WAIT).
"""

from __future__ import annotations

import ssl

import h2.errors
import trio
import trustme

from proxy.auth import Credentials, hash_key
from proxy.endpoint import EndpointTimeouts
from proxy.h2.server import PREFACE, is_preface_start
from proxy.tls import server_context
from tests.h2_client import H2Client, Response, endpoint
from tests.integration.test_proxy_endpoint import WAIT, backends


def test_preface_detection() -> None:
    assert is_preface_start(PREFACE) and is_preface_start(PREFACE[:4])
    assert is_preface_start(PREFACE + b"\0\0\0\4")
    assert not is_preface_start(b"PRI") and not is_preface_start(b"POST / HTTP/1.1\r\n")
    assert not is_preface_start(b"PRI * HTTP/1.1\r\n")


async def test_prior_knowledge_is_balanced_per_request_on_one_connection() -> None:
    async with backends("r1", "r2") as [r1, r2], endpoint([r1.upstream, r2.upstream]) as ep:
        with trio.fail_after(WAIT):
            client = await H2Client.connect(ep.address[1])
            answers = [await client.get("/hello") for _ in range(4)]
            # Four at once on the same connection, too.
            sids = [await client.request(f"/at-once/{i}") for i in range(4)]
            at_once = [await client.response(s) for s in sids]
            await client.aclose()
        assert [a.status for a in answers + at_once] == [200] * 8
        assert sorted(bytes(a.data) for a in answers) == [b"r1", b"r1", b"r2", b"r2"]
        assert len(r1.requests) == 4 and len(r2.requests) == 4
        # What the replica got: HTTP/1.1 with Host from :authority, the proxy's fields.
        _, path, fields = r1.requests[0]
        named = {n.lower(): v for n, v in fields}
        assert named[b"host"] == b"localhost"
        assert named[b"x-forwarded-for"] == b"127.0.0.1"
        assert named[b"x-forwarded-proto"] == b"http"
        assert ep.statistics().requests_total == 8


async def test_bodies_larger_than_every_window_go_both_ways_intact() -> None:
    body = bytes(range(256)) * (3 * 1024 * 1024 // 256)  # 3 MiB: over stream and connection windows
    async with backends("r1") as [r1], endpoint([r1.upstream]) as ep:
        with trio.fail_after(WAIT * 2):
            client = await H2Client.connect(ep.address[1])
            # With a length, and without one (chunked to an HTTP/1.1 replica).
            sized = await client.request(
                "/echo", method="POST", body=body, headers=[(b"content-length", b"%d" % len(body))]
            )
            first = await client.response(sized)
            unsized = await client.request("/echo", method="POST", body=body)
            second = await client.response(unsized)
            await client.aclose()
        assert first.status == 200 and bytes(first.data) == body
        assert second.status == 200 and bytes(second.data) == body
        assert first.header(b"content-length") == b"%d" % len(body)


async def test_h2c_upgrade_answers_101_and_serves_the_request_as_stream_1() -> None:
    async with backends("r1") as [r1], endpoint([r1.upstream]) as ep:
        with trio.fail_after(WAIT):
            stream = await trio.open_tcp_stream("127.0.0.1", ep.address[1])
            client = H2Client(stream, upgraded=True)
            settings = client.conn.initiate_upgrade_connection()
            await stream.send_all(
                b"GET /upgraded HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings"
                b"\r\nUpgrade: h2c\r\nHTTP2-Settings: " + settings + b"\r\n\r\n"
            )
            head = b""
            while b"\r\n\r\n" not in head:
                head += await stream.receive_some(1)
            assert head.startswith(b"HTTP/1.1 101 "), head
            client.responses[1] = Response()
            await client.flush()  # the preface and SETTINGS
            first = await client.response(1)
            second = await client.get("/after")
            await client.aclose()
        assert first.status == 200 and bytes(first.data) == b"r1"
        assert second.status == 200
        assert [p for _, p, _ in r1.requests] == [b"/upgraded", b"/after"]
        fields = {n.lower() for n, _ in r1.requests[0][2]}
        assert b"upgrade" not in fields and b"http2-settings" not in fields


async def test_alpn_h2_over_tls() -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    context = server_context(
        cert.private_key_and_cert_chain_pem.bytes(), cert.private_key_pem.bytes()
    )
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    client_ctx.set_alpn_protocols(["h2", "http/1.1"])
    async with backends("r1") as [r1], endpoint([r1.upstream]) as ep:
        ep.set_tls(context)
        with trio.fail_after(WAIT):
            client = await H2Client.connect(ep.address[1], tls=client_ctx)
            answer = await client.get("/over-tls")
            await client.aclose()
        assert answer.status == 200 and bytes(answer.data) == b"r1"
        named = {n.lower(): v for n, v in r1.requests[0][2]}
        assert named[b"x-forwarded-proto"] == b"https"


async def test_client_rst_stream_cuts_the_replica_request() -> None:
    async with backends("r1") as [r1], endpoint([r1.upstream]) as ep:
        with trio.fail_after(WAIT):
            client = await H2Client.connect(ep.address[1])
            sid = await client.request("/generate")
            await r1.arrived.wait()
            client.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
            await client.flush()
            await r1.cut.wait()  # the replica saw its connection end: it stops generating
            # The connection goes on.
            assert (await client.get("/next")).status == 200
            await client.aclose()
        stats = ep.statistics()
        assert stats.requests_total == 2 and stats.in_flight == 0
        assert stats.status.s4xx == 1 and stats.status.s2xx == 1  # 499: the client left


async def test_drain_sends_goaway_and_lets_the_open_stream_finish() -> None:
    async with backends("r1") as [r1], endpoint([r1.upstream]) as ep:
        with trio.fail_after(WAIT):
            client = await H2Client.connect(ep.address[1])
            sid = await client.request("/sse")
            while not client.responses[sid].data:
                await client.read_some()
            ep.begin_shutdown(WAIT)
            while client.goaway is None:
                await client.read_some()
            assert client.goaway.error_code == h2.errors.ErrorCodes.NO_ERROR
            assert client.goaway.last_stream_id == sid
            r1.release.set()
            answer = await client.response(sid)
            await client.until_closed()
            await client.aclose()
        assert answer.status == 200 and bytes(answer.data) == b"data: first\n\ndata: second\n\n"


async def test_idle_connection_gets_goaway_and_closes() -> None:
    timeouts = EndpointTimeouts(client_idle=0.3)
    async with backends("r1") as [r1], endpoint([r1.upstream], timeouts) as ep:
        with trio.fail_after(WAIT):
            client = await H2Client.connect(ep.address[1])
            assert (await client.get("/x")).status == 200
            start = trio.current_time()
            await client.until_closed()
            await client.aclose()
        assert client.goaway is not None and client.goaway.error_code == 0
        assert trio.current_time() - start < 3.0


async def test_preface_and_settings_are_due_within_header_read() -> None:
    timeouts = EndpointTimeouts(header_read=0.3)
    async with backends("r1") as [r1], endpoint([r1.upstream], timeouts) as ep:
        with trio.fail_after(WAIT):
            stream = await trio.open_tcp_stream("127.0.0.1", ep.address[1])
            await stream.send_all(PREFACE[:10])
            start = trio.current_time()
            got = b""  # the server's SETTINGS (its preface), then the end
            while piece := await stream.receive_some(65536):
                got += piece
            await stream.aclose()
        assert trio.current_time() - start < 3.0
        assert r1.requests == []


async def test_bad_frame_is_goaway_protocol_error_and_nothing_forwarded() -> None:
    async with backends("r1") as [r1], endpoint([r1.upstream]) as ep:
        with trio.fail_after(WAIT):
            client = await H2Client.connect(ep.address[1])
            # DATA on stream 0 is a connection error (RFC 9113 6.1).
            await client.stream.send_all(b"\0\0\1\0\0\0\0\0\0x")  # len type flags id
            await client.until_closed()
            await client.aclose()
        assert client.goaway is not None
        assert client.goaway.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
        assert r1.requests == []


async def test_a_malformed_request_is_refused_and_never_forwarded() -> None:
    async with backends("r1") as [r1], endpoint([r1.upstream]) as ep:
        with trio.fail_after(WAIT):
            client = await H2Client.connect(ep.address[1])
            # Connection-specific fields are malformed in HTTP/2 (h2 checks it): a
            # protocol error for the whole connection, nothing forwarded.
            sid = client.conn.get_next_available_stream_id()
            client.conn.config.validate_outbound_headers = False
            client.conn.config.normalize_outbound_headers = False  # it would strip it
            client.responses[sid] = Response()
            client.conn.send_headers(
                sid,
                [
                    (b":method", b"GET"),
                    (b":scheme", b"http"),
                    (b":authority", b"x"),
                    (b":path", b"/smuggle"),
                    (b"connection", b"close"),
                ],
                end_stream=True,
            )
            await client.flush()
            answer = await client.response(sid)
            await client.aclose()
        assert answer.reset == h2.errors.ErrorCodes.PROTOCOL_ERROR or (
            client.goaway is not None and client.goaway.error_code != 0
        )
        assert r1.requests == []


async def test_no_replica_is_503_with_retry_after() -> None:
    async with endpoint([]) as ep:
        with trio.fail_after(WAIT):
            client = await H2Client.connect(ep.address[1])
            answer = await client.get("/x", headers=[(b"accept", b"application/json")])
            await client.aclose()
        assert answer.status == 503
        assert answer.header(b"retry-after") == b"1"
        assert b'"code": 503' in answer.data


async def test_a_header_list_over_64_kib_is_refused_and_never_forwarded() -> None:
    async with backends("r1") as [r1], endpoint([r1.upstream]) as ep:
        with trio.fail_after(WAIT):
            client = await H2Client.connect(ep.address[1])
            await client.read_some()  # the server's SETTINGS (MAX_HEADER_LIST_SIZE) first
            client.conn.max_outbound_frame_size = 16384
            huge = [(b"x-big-%d" % i, b"v" * 8000) for i in range(10)]
            answer = await client.get("/big", headers=huge)
            await client.aclose()
        # A connection error from h2's header decoder (ENHANCE_YOUR_CALM / COMPRESSION_ERROR).
        assert client.goaway is not None and client.goaway.error_code != 0, (answer, client.goaway)
        assert not answer.headers and r1.requests == []
        # Settings as advertised to the client.
        settings = client.conn.remote_settings
        assert settings.max_concurrent_streams == 100
        assert settings.max_header_list_size == 64 * 1024


async def test_a_protected_endpoint_answers_401_per_stream_and_lets_a_key_through() -> None:
    """[endpoint.auth] over HTTP/2: each stream is judged on its own; the refused one never
    reaches a replica, the one with a key does, and the key is not passed on."""
    async with backends("r1") as [r1], endpoint([r1.upstream]) as ep:
        ep.set_credentials(Credentials(keys={"key:k1": hash_key(b"sk-good")}))
        with trio.fail_after(WAIT):
            client = await H2Client.connect(ep.address[1])
            refused = await client.get("/secret", headers=[(b"accept", b"application/json")])
            good = await client.get("/secret", headers=[(b"authorization", b"Bearer sk-good")])
            wrong = await client.get("/secret", headers=[(b"authorization", b"Bearer sk-bad")])
            await client.aclose()
        assert refused.status == 401 and b"authentication_error" in bytes(refused.data)
        assert refused.header(b"www-authenticate") is not None
        assert wrong.status == 401
        assert good.status == 200 and bytes(good.data) == b"r1"
        assert len(r1.requests) == 1
        _, _, fields = r1.requests[0]
        assert b"authorization" not in {n.lower() for n, _ in fields}
        stats = ep.statistics()
        assert stats.unauthorized == 2 and dict(stats.by_credential or ()) == {"key:k1": 1}
