"""`[endpoint]`'s client limits: `max_connections` and `trusted_proxies`.

`max_connections` caps the client connections the endpoint holds open at once (absent: the
share of berthd's file descriptors left once the control plane's reserve is kept, see
`proxy.admission`); `trusted_proxies` lists the peers (CIDRs, or single addresses) whose
`Forwarded`, `X-Real-IP` and `X-Forwarded-*` headers the endpoint keeps and extends rather
than replaces. Each address is stored in its network form (`10.0.0.1` -> `10.0.0.1/32`),
so two ways of writing one network are one spec.
"""

from __future__ import annotations

import ipaddress

from config.errors import Problem
from config.reader import Reader, as_int, join_path

MAX_CONNECTIONS_LIMIT = 1_000_000
MAX_TRUSTED_PROXIES = 64


def as_network(raw: object) -> str:
    """A CIDR (or one address) in its canonical network form; ValueError says what is wrong."""
    if not isinstance(raw, str):
        raise ValueError('must be a string such as "10.0.0.0/8" or "192.0.2.7"')
    try:
        return ipaddress.ip_network(raw.strip(), strict=True).compressed
    except ValueError:
        pass
    try:
        near = ipaddress.ip_network(raw.strip(), strict=False).compressed
    except ValueError:
        raise ValueError('not an IP network such as "10.0.0.0/8" or an address') from None
    raise ValueError(f"has host bits set (did you mean {near!r}?)")


def read_limits(r: Reader) -> tuple[int | None, tuple[str, ...]]:
    """`max_connections` (None: the default) and `trusted_proxies` of `[endpoint]`."""
    max_connections = r.optional("max_connections", as_int(1, MAX_CONNECTIONS_LIMIT))
    return max_connections, _read_networks(r, "trusted_proxies")


def _read_networks(r: Reader, key: str) -> tuple[str, ...]:
    raw = r.optional(key, lambda v: v)
    if raw is None:
        return ()
    if not isinstance(raw, list):
        r.problem(key, 'must be a list of CIDRs such as ["10.0.0.0/8"]', raw)
        return ()
    if len(raw) > MAX_TRUSTED_PROXIES:
        r.problem(key, f"at most {MAX_TRUSTED_PROXIES} networks", len(raw))
        return ()
    out: list[str] = []
    for i, item in enumerate(raw):
        try:
            out.append(as_network(item))
        except ValueError as exc:
            r.problems.append(Problem(join_path(r.path_of(key), i), str(exc), item))
    return tuple(dict.fromkeys(out))
