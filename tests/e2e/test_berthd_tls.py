"""berthd as a process with a TLS endpoint (issue 13, point 2): the PEM files checked at
apply (under credentials_roots, the key matching the certificate), HTTPS with the test CA,
and the certificate reloaded in place on SIGHUP and on `berth apply`: a connection opened
before keeps working on the same socket, a new one sees the new certificate.

The credentials root is a directory of the test's own, owned by root, mode 0700, the
files 0600 (as `/etc/berth/credentials` would be). Certificates are trustme's.
"""

from __future__ import annotations

import http.client
import os
import signal
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from daemon.berthd import instance_id
from daemon.runtime.interface import LABEL_INSTANCE
from tests.conftest import free_port, podman_binary, remove_labelled_containers
from tests.e2e.berthd_process import Berthd, wait_until
from tests.specs import echo_spec

pytestmark = [
    pytest.mark.podman,
    pytest.mark.skipif(os.geteuid() != 0, reason="credential files must be owned by root"),
]


@pytest.fixture
def creds(tmp_path: Path) -> Path:
    root = tmp_path / "credentials"
    root.mkdir(mode=0o700)
    return root


@pytest.fixture
def daemon(tmp_path: Path, creds: Path, podman_url: str) -> Iterator[Berthd]:
    config = tmp_path / "berthd.toml"
    config.write_text(f'credentials_roots = ["{creds}"]\n')
    berthd = Berthd(
        tmp_path / "state",
        tmp_path / "run" / "berth.sock",
        podman_url,
        tmp_path / "log",
        extra_args=["--config", str(config)],
    )
    try:
        berthd.start()
        yield berthd
    finally:
        berthd.stop()
        remove_labelled_containers(podman_binary(), {LABEL_INSTANCE: instance_id(berthd.state_dir)})


def install(creds: Path, ca: trustme.CA, *, key_of: trustme.CA | None = None) -> None:
    """Write a certificate for localhost from `ca` (and the key of another, if asked)."""
    cert = ca.issue_cert("localhost", "127.0.0.1")
    key = (key_of.issue_cert("localhost") if key_of else cert).private_key_pem
    for name, pem in (("api.crt", cert.cert_chain_pems[0].bytes()), ("api.key", key.bytes())):
        tmp = creds / f".{name}.new"
        tmp.write_bytes(pem)
        tmp.chmod(0o600)
        tmp.replace(creds / name)  # as a renewal would: a new file, renamed into place


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


def https_get(port: int, ca: trustme.CA) -> tuple[int, str]:
    conn = http.client.HTTPSConnection("localhost", port, timeout=5, context=trusting(ca))
    try:
        conn.request("GET", "/cgi-bin/echo")
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def verifies_with(port: int, ca: trustme.CA) -> bool:
    try:
        return https_get(port, ca)[0] == 200
    except (OSError, http.client.HTTPException):
        return False


def test_tls_endpoint_checked_at_apply_served_and_reloaded_in_place(
    daemon: Berthd, creds: Path, tmp_path: Path, echo_image: str
) -> None:
    port = free_port()
    tls = f'[endpoint.tls]\ncert = "{creds}/api.crt"\nkey = "{creds}/api.key"\n'
    spec = tmp_path / "tls.toml"
    spec.write_text(echo_spec("tls", echo_image, port, count=1, extra=tls))
    first, second, third = trustme.CA(), trustme.CA(), trustme.CA()

    # Refused at apply, naming the field: a key that is not the certificate's, and a path
    # outside the credentials roots.
    install(creds, first, key_of=second)
    refused = daemon.berth("apply", str(spec), check=False)
    assert refused.returncode != 0
    assert "endpoint.tls.key: is not the private key of endpoint.tls.cert" in refused.stderr
    outside = tmp_path / "outside.toml"
    elsewhere = tls.replace(f'"{creds}/api.crt"', '"/etc/ssl/x.pem"')
    outside.write_text(echo_spec("tls", echo_image, port, count=1, extra=elsewhere))
    refused = daemon.berth("apply", str(outside), check=False)
    assert refused.returncode != 0
    assert "endpoint.tls.cert: must lie under berthd's credentials_roots" in refused.stderr

    install(creds, first)
    daemon.berth("apply", str(spec))
    wait_until("the TLS endpoint to answer", lambda: verifies_with(port, first), 60)
    status, body = https_get(port, first)
    assert status == 200 and "hello" in body

    # One connection kept open across both reloads.
    kept = http.client.HTTPSConnection("localhost", port, timeout=5, context=trusting(first))
    try:
        kept.request("GET", "/cgi-bin/echo")
        assert b"hello" in kept.getresponse().read()
        sock = kept.sock

        install(creds, second)
        daemon.send(signal.SIGHUP)
        wait_until("SIGHUP to load the new certificate", lambda: verifies_with(port, second), 20)
        assert not verifies_with(port, first)

        install(creds, third)
        daemon.berth("apply", str(spec))  # the same spec: its files are read again
        assert verifies_with(port, third) and not verifies_with(port, second)

        kept.request("GET", "/cgi-bin/echo")
        assert b"hello" in kept.getresponse().read()
        assert kept.sock is sock  # the same connection, never dropped
    finally:
        kept.close()
