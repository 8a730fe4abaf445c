"""A TLS endpoint with real sockets on 127.0.0.1 (issue 13, point 2), in front of a plain
replica (test_proxy_endpoint's Backend): httpx with the test CA gets 200; a plain-HTTP
client fails cleanly; `openssl s_client` negotiates http/1.1 over TLS >= 1.2 and a TLS 1.1
client is refused; a certificate swapped in place leaves an open connection working while
a new one sees the new certificate.

Certificates are trustme's. Every wait is bounded (WAIT).
"""

from __future__ import annotations

import shutil
import ssl
from pathlib import Path
from typing import cast

import httpx
import pytest
import trio
import trustme

from proxy.tls import server_context
from tests.integration.test_proxy_endpoint import WAIT, Client, backends, endpoint, raw_exchange

OPENSSL = shutil.which("openssl")


def context_for(ca: trustme.CA, name: str = "localhost") -> ssl.SSLContext:
    cert = ca.issue_cert(name, "127.0.0.1")
    return server_context(cert.private_key_and_cert_chain_pem.bytes(), cert.private_key_pem.bytes())


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


async def test_httpx_with_the_ca_gets_200_and_plain_http_fails_cleanly() -> None:
    ca = trustme.CA()
    async with backends("r1") as [r1], endpoint([r1.upstream]) as ep:
        ep.set_tls(context_for(ca))
        port = ep.address[1]
        with trio.fail_after(WAIT):
            async with httpx.AsyncClient(verify=client_context(ca)) as client:
                first = await client.get(f"https://localhost:{port}/hello")
                second = await client.post(f"https://localhost:{port}/echo", content=b"x" * 100_000)
        assert first.status_code == 200 and first.http_version == "HTTP/1.1"
        assert second.status_code == 200
        assert [path for _, path, _ in r1.requests] == [b"/hello", b"/echo"]
        # The replica is told the client spoke https.
        fields = [{n.lower(): v for n, v in hs} for _, _, hs in r1.requests]
        assert all(f[b"x-forwarded-proto"] == b"https" for f in fields), fields
        assert all(f[b"forwarded"].endswith(b";proto=https") for f in fields), fields
        # A client that does not trust the CA is refused by its own check.
        with trio.fail_after(WAIT), pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient() as client:
                await client.get(f"https://localhost:{port}/hello")
        # Plain HTTP to a TLS port: the connection ends (an alert, at most), nothing forwarded,
        # and the endpoint goes on serving.
        out = await raw_exchange(port, b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"HTTP/1.1" not in out
        assert b"/plain" not in [path for _, path, _ in r1.requests]
        with trio.fail_after(WAIT):
            async with httpx.AsyncClient(verify=client_context(ca)) as client:
                assert (await client.get(f"https://localhost:{port}/again")).status_code == 200


async def s_client(port: int, ca: Path, *args: str) -> tuple[int, str]:
    assert OPENSSL is not None
    cmd = [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost"]
    with trio.fail_after(WAIT):
        done = await trio.run_process(
            [*cmd, "-CAfile", str(ca), "-verify_return_error", *args],
            stdin=b"GET /s-client HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return done.returncode, (done.stdout + done.stderr).decode(errors="replace")


@pytest.mark.skipif(OPENSSL is None, reason="needs the openssl command")
async def test_openssl_s_client_negotiates_http_1_1_over_tls_1_2_plus_and_tls_1_1_is_refused(
    tmp_path: Path,
) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    async with backends("r1") as [r1], endpoint([r1.upstream]) as ep:
        ep.set_tls(context_for(ca))
        port = ep.address[1]
        rc, out = await s_client(port, ca_file, "-alpn", "http/1.1", "-ign_eof")
        assert rc == 0, out
        assert "ALPN protocol: http/1.1" in out, out
        assert "Verify return code: 0 (ok)" in out, out
        assert "Protocol  : TLSv1.3" in out or "Protocol  : TLSv1.2" in out, out
        assert "HTTP/1.1 200" in out, out

        rc, out = await s_client(port, ca_file, "-tls1_2", "-alpn", "http/1.1", "-ign_eof")
        assert rc == 0 and "Protocol  : TLSv1.2" in out and "HTTP/1.1 200" in out, out

        # TLS 1.1 (the client's security level lowered so that it offers it at all): the
        # server answers a protocol_version alert and no session begins.
        rc, out = await s_client(port, ca_file, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0")
        assert rc != 0, out
        assert "alert protocol version" in out, out
        assert [path for _, path, _ in r1.requests] == [b"/s-client", b"/s-client"]


async def test_a_certificate_swapped_in_place_keeps_open_connections_and_serves_new_ones() -> None:
    old_ca, new_ca = trustme.CA(), trustme.CA()
    async with backends("r1") as [r1], endpoint([r1.upstream]) as ep:
        ep.set_tls(context_for(old_ca))
        port = ep.address[1]
        with trio.fail_after(WAIT):
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            stream = trio.SSLStream(tcp, client_context(old_ca), server_hostname="localhost")
            async with stream:
                before = Client(cast(trio.SocketStream, stream))
                assert (await before.request("GET", "/before")).status == 200

                ep.set_tls(context_for(new_ca))  # no rebind: the same listener
                assert ep.address[1] == port

                # The connection opened before goes on with the old certificate.
                assert (await before.request("GET", "/kept")).status == 200
                # A new one sees the new certificate: trusted with the new CA only.
                async with httpx.AsyncClient(verify=client_context(new_ca)) as client:
                    assert (await client.get(f"https://localhost:{port}/new")).status_code == 200
                with pytest.raises(httpx.ConnectError):
                    async with httpx.AsyncClient(verify=client_context(old_ca)) as client:
                        await client.get(f"https://localhost:{port}/old")
                assert (await before.request("GET", "/still")).status == 200
        assert [path for _, path, _ in r1.requests] == [b"/before", b"/kept", b"/new", b"/still"]
        assert ep.connections() <= 1  # the httpx connections are gone, `before` is closing
