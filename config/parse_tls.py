"""`[endpoint.tls]`: the endpoint speaks TLS with this certificate and key.

    [endpoint.tls]
    cert = "/etc/berth/credentials/api.crt"   # PEM: the certificate, then its chain
    key = "/etc/berth/credentials/api.key"    # PEM: its private key

Both are absolute paths. That they lie under berthd's `credentials_roots` and pass its
checks (`config.credentials`), and that the key is the certificate's, is checked at apply,
on the host (`daemon.reconcile.endpoint_tls`).
"""

from __future__ import annotations

from config.parse_mounts import as_abs_path
from config.reader import Reader
from config.spec import EndpointTls


def read_tls(r: Reader | None) -> EndpointTls | None:
    if r is None:
        return None
    cert = r.required("cert", as_abs_path)
    key = r.required("key", as_abs_path)
    r.close()
    if cert is None or key is None:
        return None
    return EndpointTls(cert=cert, key=key)
