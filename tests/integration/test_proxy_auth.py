"""A protected endpoint with real sockets on 127.0.0.1 (issue 13, point 1): 401 without or
with a wrong key, 200 with a right one, the key never reaching the replica, a new
credential set applying to the next request of an open connection.

The replica is test_proxy_endpoint's Backend, which records every request's header fields.
Every wait is bounded (WAIT).
"""

from __future__ import annotations

import base64
import json

import trio

from proxy.auth import Credentials, hash_key, hash_password
from tests.integration.test_proxy_endpoint import (
    WAIT,
    Client,
    backends,
    endpoint,
    raw_exchange,
    until,
)

KEY = "bk_" + "k" * 43
WRONG = "bk_" + "w" * 43


def keys(*pairs: tuple[str, str], forward: bool = False) -> Credentials:
    return Credentials(
        keys={cid: hash_key(key.encode()) for cid, key in pairs}, forward_auth=forward
    )


def header_names(requests: list[tuple[bytes, bytes, list[tuple[bytes, bytes]]]]) -> set[bytes]:
    return {n.lower() for _, _, hs in requests for n, _ in hs}


def all_values(requests: list[tuple[bytes, bytes, list[tuple[bytes, bytes]]]]) -> bytes:
    return b"\n".join(v for _, _, hs in requests for _, v in hs)


async def test_401_without_or_with_a_wrong_key_200_with_the_right_one() -> None:
    async with backends("r1") as [r1], endpoint([r1.upstream]) as ep:
        ep.set_credentials(keys(("key:k1", KEY)))
        port = ep.address[1]
        async with Client.open(port) as c:
            missing = await c.request("GET", "/hello")
            wrong = await c.request("GET", "/hello", headers=[("Authorization", f"Bearer {WRONG}")])
            json_wrong = await c.request(
                "POST", "/v1/chat/completions", b'{"model": "m"}',
                headers=[("x-api-key", WRONG), ("Content-Type", "application/json")],
            )  # fmt: skip
            right = await c.request("GET", "/hello", headers=[("Authorization", f"Bearer {KEY}")])
            anthropic = await c.request("POST", "/v1/messages", b"{}", headers=[("x-api-key", KEY)])
        assert missing.status == wrong.status == json_wrong.status == 401
        assert missing.headers["www-authenticate"] == 'Bearer realm="berth"'
        assert wrong.headers["www-authenticate"] == 'Bearer realm="berth", error="invalid_token"'
        assert json.loads(json_wrong.body)["error"]["type"] == "authentication_error"
        assert right.status == 200 and anthropic.status == 200
        # Only the two allowed requests reached the replica, on the same client connection
        # that got the 401s (a refused body was read away), and without the key.
        assert [path for _, path, _ in r1.requests] == [b"/hello", b"/v1/messages"]
        assert not header_names(r1.requests) & {b"authorization", b"x-api-key"}
        assert KEY.encode() not in all_values(r1.requests)
        # The client may read the last answer before the proxy has counted it.
        await until(lambda: ep.statistics().in_flight == 0)
        stats = ep.statistics()
        assert stats.by_credential == (("key:k1", 2),) and stats.unauthorized == 3
        assert (
            stats.status.s4xx == 3
            and stats.status.s2xx == 2
            and stats.replicas[0].requests_total == 2
        )


async def test_forward_auth_passes_the_header_on() -> None:
    async with backends("r1") as [r1], endpoint([r1.upstream]) as ep:
        ep.set_credentials(keys(("key:k1", KEY), forward=True))
        async with Client.open(ep.address[1]) as c:
            reply = await c.request("GET", "/", headers=[("Authorization", f"Bearer {KEY}")])
        assert reply.status == 200
        [(_, _, hs)] = r1.requests
        assert (b"authorization", f"Bearer {KEY}".encode()) in [(n.lower(), v) for n, v in hs]


async def test_a_new_credential_set_applies_to_the_next_request_of_an_open_connection() -> None:
    async with backends("r1") as [r1], endpoint([r1.upstream]) as ep:
        ep.set_credentials(keys(("key:k1", KEY)))
        bearer = [("Authorization", f"Bearer {KEY}")]
        async with Client.open(ep.address[1]) as c:
            assert (await c.request("GET", "/a", headers=bearer)).status == 200
            ep.set_credentials(keys())  # revoked: no rebind, same connection
            assert (await c.request("GET", "/b", headers=bearer)).status == 401
            ep.set_credentials(keys(("key:k2", KEY)))
            assert (await c.request("GET", "/c", headers=bearer)).status == 200
            ep.set_credentials(None)  # open again
            assert (await c.request("GET", "/d")).status == 200
        assert [p for _, p, _ in r1.requests] == [b"/a", b"/c", b"/d"]
        assert ep.statistics().by_credential is None


async def test_basic_users_and_the_basic_challenge() -> None:
    async with backends("r1") as [r1], endpoint([r1.upstream]) as ep:
        alice = await trio.to_thread.run_sync(hash_password, b"s3cret")
        ep.set_credentials(Credentials(users={"alice": alice}))
        good = "Basic " + base64.b64encode(b"alice:s3cret").decode()
        bad = "Basic " + base64.b64encode(b"alice:nope").decode()
        out = await raw_exchange(
            ep.address[1], b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert b'WWW-Authenticate: Basic realm="berth", charset="UTF-8"\r\n' in out
        async with Client.open(ep.address[1]) as c:
            assert (await c.request("GET", "/1", headers=[("Authorization", bad)])).status == 401
            for i in range(3):
                reply = await c.request("GET", f"/ok{i}", headers=[("Authorization", good)])
                assert reply.status == 200
        assert [p for _, p, _ in r1.requests] == [b"/ok0", b"/ok1", b"/ok2"]
        assert b"authorization" not in header_names(r1.requests)
        assert ep.statistics().by_credential == (("user:alice", 3),)


async def test_a_refused_body_too_large_to_read_away_closes_the_connection() -> None:
    async with backends("r1") as [r1], endpoint([r1.upstream]) as ep:
        ep.set_credentials(keys(("key:k1", KEY)))
        with trio.fail_after(WAIT):
            stream = await trio.open_tcp_stream("127.0.0.1", ep.address[1])
            async with stream:
                # A head announcing 10 MB, and only a little of it sent.
                await stream.send_all(
                    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n" + b"x" * 1000
                )
                # Too much to read away: the 401 comes at once and says close.
                out = b""
                with trio.fail_after(1.0):
                    while chunk := await stream.receive_some(65536):
                        out += chunk
        assert out.startswith(b"HTTP/1.1 401 ") and b"Connection: close\r\n" in out
        assert r1.requests == []
