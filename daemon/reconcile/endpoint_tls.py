"""`[endpoint.tls]` on the host: its PEM files read through `config.credentials`, a context.

`load_tls` is the one way a TLS context is made from a spec: the certificate and the key
are each read with the checked opener (under `credentials_roots`, no symbolic link, owned
by root or berthd, not group/other-writable), then loaded by `proxy.tls.server_context`,
which refuses a key that is not the certificate's. Every refusal is one `TlsFileError`
whose message names the field (`endpoint.tls.cert`, `endpoint.tls.key`) and never holds a
byte of the files. `tls_problems` is the same load for apply's host check.

A context is made when an endpoint first gets one, when its `[endpoint.tls]` changes, and
on a reload (SIGHUP, `berth apply`: `EndpointManager.reload_tls`); in between it is kept,
so a reconcile round reads no file.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from pathlib import Path

from config.credentials import CredentialFileError, read_credential
from config.spec import EndpointTls
from proxy.tls import server_context

CERT_FIELD = "endpoint.tls.cert"
KEY_FIELD = "endpoint.tls.key"


class TlsFileError(Exception):
    """`[endpoint.tls]` cannot be loaded; `str()` is `field: reason`."""


def load_tls(tls: EndpointTls, roots: Sequence[Path]) -> ssl.SSLContext:
    """A server context for `tls`; raises TlsFileError naming the field."""
    try:
        cert = read_credential(tls.cert, field=CERT_FIELD, roots=roots)
        key = read_credential(tls.key, field=KEY_FIELD, roots=roots)
    except CredentialFileError as exc:
        raise TlsFileError(str(exc)) from None
    except OSError as exc:  # a read that failed midway (EIO, ENFILE, ...)
        why = exc.strerror or exc
        raise TlsFileError(f"{CERT_FIELD}/{KEY_FIELD}: cannot be read ({why})") from None
    if b"CERTIFICATE-----" not in cert:
        raise TlsFileError(f"{CERT_FIELD}: is not a PEM certificate")
    if b"PRIVATE KEY-----" not in key:
        raise TlsFileError(f"{KEY_FIELD}: is not a PEM private key")
    if b"ENCRYPTED PRIVATE KEY-----" in key or b"Proc-Type: 4,ENCRYPTED" in key:
        raise TlsFileError(
            f"{KEY_FIELD}: cannot be loaded (it is encrypted, and berth takes no passphrase: "
            "give it unencrypted, mode 0600 under credentials_roots)"
        )
    try:
        return server_context(cert, key)
    except OSError as exc:
        if not isinstance(exc, ssl.SSLError):  # memfd_create out of descriptors, ...
            raise TlsFileError(f"{CERT_FIELD}: cannot be loaded ({exc.strerror or exc})") from None
        shown = getattr(exc, "reason", None) or str(exc)
        reason = shown.lower()
        if "mismatch" in reason:
            raise TlsFileError(
                f"{KEY_FIELD}: is not the private key of {CERT_FIELD} (they do not match)"
            ) from None
        library = (getattr(exc, "library", None) or "").lower()
        if "pem" in library or "key" in reason or "decrypt" in reason:
            raise TlsFileError(f"{KEY_FIELD}: cannot be loaded ({shown})") from None
        raise TlsFileError(f"{CERT_FIELD}: cannot be loaded ({shown})") from None


def tls_problems(tls: EndpointTls | None, roots: Sequence[Path]) -> list[str]:
    """Apply's host check: [] when `tls` loads (or there is none)."""
    if tls is None:
        return []
    try:
        load_tls(tls, roots)
    except TlsFileError as exc:
        return [str(exc)]
    return []
