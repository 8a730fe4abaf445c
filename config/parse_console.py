"""berthd.toml's `[console]`: where the web console listens (issue 17; docs/console.md).

    [console]
    listen = "127.0.0.1:9470"          # absent: no console
    [console.tls]                      # as [endpoint.tls]: required off loopback
    cert = "/etc/berth/credentials/console.crt"
    key = "/etc/berth/credentials/console.key"

A listen address that is not loopback (127.0.0.0/8, ::1) is refused unless `[console.tls]`
is set: the sign-in's password and the session cookie would cross the network in clear.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from config.parse_listen import ip_listen
from config.parse_tls import read_tls
from config.reader import Reader
from config.spec import EndpointTls

OFF_LOOPBACK = (
    "is not a loopback address: set [console.tls] (cert, key) to serve the console there, "
    "since sign-in passwords and session cookies cross it"
)


@dataclass(frozen=True)
class ConsoleSettings:
    """berthd.toml's `[console]`: the console listens at `host`:`port`."""

    host: str
    port: int
    tls: EndpointTls | None = None

    @property
    def listen(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.listen}/console/"


def read_console_settings(
    r: Reader | None,
) -> ConsoleSettings | None:
    """`[console]`; None when absent (or wrong: then problems are recorded)."""
    if r is None:
        return None
    listen = r.required("listen", ip_listen(9470))
    tls = read_tls(r.table("tls"))
    r.close()
    if listen is None:
        return None
    host, port = listen
    if tls is None and not ipaddress.ip_address(host).is_loopback:
        r.problem("listen", OFF_LOOPBACK, f"{host}:{port}")
        return None
    return ConsoleSettings(host=host, port=port, tls=tls)
