"""The daemon's TLS endpoints (`EndpointManager`): a context from `[endpoint.tls]` before the
first connection, kept between rounds, swapped in place by `reload_tls` (the same
listener), kept when a reload fails, dropped when the spec drops TLS."""

from __future__ import annotations

from pathlib import Path

import trio
import trustme

from config.spec import Endpoint as EndpointSpec
from config.spec import EndpointTls
from daemon.reconcile.endpoints import EndpointManager
from tests.conftest import free_port


def install(root: Path, ca: trustme.CA) -> EndpointTls:
    cert = ca.issue_cert("localhost")
    for name, pem in (("a.crt", cert.cert_chain_pems[0]), ("a.key", cert.private_key_pem)):
        (root / name).write_bytes(pem.bytes())
        (root / name).chmod(0o600)
    return EndpointTls(str(root / "a.crt"), str(root / "a.key"))


async def test_reload_swaps_the_context_in_place_and_a_failed_one_keeps_it(tmp_path: Path) -> None:
    root = tmp_path / "credentials"
    root.mkdir(mode=0o700)
    tls = install(root, trustme.CA())
    manager = EndpointManager()
    manager.tls_roots = (root,)
    spec = EndpointSpec(port=free_port(), bind="127.0.0.1", tls=tls)
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        with trio.fail_after(10):
            ep = await manager.ensure("a", spec)
            first = ep.tls
            assert first is not None
            address = ep.address
            assert await manager.ensure("a", spec) is ep and ep.tls is first  # no re-read

            install(root, trustme.CA())
            assert await manager.reload_tls("b") == [] and ep.tls is first  # not this one
            assert await manager.reload_tls("a") == []
            second = ep.tls
            assert second is not None and second is not first and ep.address == address

            (root / "a.key").write_bytes(b"not a key")
            failed = await manager.reload_tls()
            assert failed == [("a", "endpoint.tls.key: is not a PEM private key")]
            assert ep.tls is second  # what there was goes on

            plain = EndpointSpec(port=spec.port, bind="127.0.0.1")
            assert await manager.ensure("a", plain) is ep and ep.tls is None
            assert await manager.reload_tls() == []
        nursery.cancel_scope.cancel()


def test_an_encrypted_key_is_refused_naming_the_field_not_prompted_for(tmp_path: Path) -> None:
    # OpenSSL would ask for a passphrase on berthd's terminal and hold the thread (and the
    # apply lock) for ever; berth takes no passphrase, so it must fail at once instead.
    from cryptography.hazmat.primitives import serialization

    from daemon.reconcile.endpoint_tls import TlsFileError, load_tls

    root = tmp_path / "creds"
    root.mkdir(mode=0o700)
    tls = install(root, trustme.CA())
    key_file = Path(tls.key)
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"hunter2"),
        )
    )
    try:
        load_tls(tls, [root])
    except TlsFileError as exc:
        assert str(exc).startswith("endpoint.tls.key: cannot be loaded"), exc
    else:
        raise AssertionError("an encrypted key was loaded")
