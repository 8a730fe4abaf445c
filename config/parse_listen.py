"""berthd.toml's listen addresses, "host:port": `[metrics]`, `[gateway]` and `[console]`.

`listen_problem(value, example_port)` is the form every one of them must have
("127.0.0.1:9464", "[::1]:9464", ":9464"); the gateway and the console also want an IP
address, not a name, as `ip_listen(example_port)` reads it (":PORT": every IPv4 address).
The messages show the setting's own default port, so an example can be copied as is.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable


def listen_problem(value: object, example_port: int = 9464) -> str | None:
    """Why `value` is not "host:port"; None when it is."""
    example = f'"127.0.0.1:{example_port}"'
    if not isinstance(value, str):
        return f"must be a string such as {example}"
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        return f'must be "host:port" with a port from 1 to 65535, such as {example}'
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return "not an IPv6 address in brackets"
    elif ":" in host:
        return f'write an IPv6 host in brackets: "[::1]:{example_port}"'
    return None


def ip_listen(example_port: int) -> Callable[[object], tuple[str, int]]:
    """A Reader converter: "host:port" with an IP address -> (the address compressed, port)."""

    def convert(raw: object) -> tuple[str, int]:
        reason = listen_problem(raw, example_port)
        if reason is not None:
            raise ValueError(reason)
        assert isinstance(raw, str)
        host, _, port = raw.rpartition(":")
        host = host[1:-1] if host.startswith("[") else host
        host = host or "0.0.0.0"  # ":PORT": every IPv4 address
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(
                f'must name an IP address and a port, such as "127.0.0.1:{example_port}" or '
                f'"[::1]:{example_port}"'
            ) from None
        return address.compressed, int(port)

    return convert
