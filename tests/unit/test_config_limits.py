"""`[endpoint] max_connections` and `trusted_proxies`: parsed, canonical, refused by path."""

from __future__ import annotations

import pytest

from config.errors import SpecError
from config.parse import parse_spec, spec_id

BASE = 'name = "m"\nimage = "img:1"\nport = 8000\n[endpoint]\nport = 18080\n'


def problems(extra: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(BASE + extra)
    return [str(p) for p in info.value.problems]


def test_defaults_leave_the_spec_id_alone() -> None:
    spec = parse_spec(BASE)
    assert spec.endpoint.max_connections is None
    assert spec.endpoint.trusted_proxies == ()
    assert spec_id(parse_spec(BASE + "trusted_proxies = []\n")) == spec_id(spec)


def test_values_are_read_and_networks_canonical() -> None:
    spec = parse_spec(
        BASE + 'max_connections = 500\ntrusted_proxies = ["10.0.0.0/8", "192.0.2.7", "::1"]\n'
    )
    assert spec.endpoint.max_connections == 500
    assert spec.endpoint.trusted_proxies == ("10.0.0.0/8", "192.0.2.7/32", "::1/128")
    same = parse_spec(
        BASE + 'max_connections = 500\ntrusted_proxies = ["10.0.0.0/8", "192.0.2.7/32", "::1"]\n'
    )
    assert spec_id(same) == spec_id(spec)
    assert spec_id(spec) != spec_id(parse_spec(BASE))


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("max_connections = 0\n", "endpoint.max_connections: must be between 1 and 1000000"),
        ('max_connections = "many"\n', "endpoint.max_connections: must be an integer"),
        ('trusted_proxies = "10.0.0.0/8"\n', "endpoint.trusted_proxies: must be a list"),
        (
            'trusted_proxies = ["10.0.0.0/8", "10.0.0.1/8"]\n',
            "endpoint.trusted_proxies[1]: has host bits set (did you mean '10.0.0.0/8'?)",
        ),
        ('trusted_proxies = ["proxy.local"]\n', "endpoint.trusted_proxies[0]: not an IP network"),
        ("trusted_proxies = [7]\n", "endpoint.trusted_proxies[0]: must be a string"),
    ],
)
def test_bad_values_name_their_field(extra: str, expected: str) -> None:
    assert any(p.startswith(expected) for p in problems(extra)), problems(extra)


def test_every_bad_entry_is_named_at_once() -> None:
    got = problems('trusted_proxies = ["x", "10.0.0.0/8", "y"]\nmax_connections = -1\n')
    paths = sorted(p.split(":")[0] for p in got)
    assert paths == [
        "endpoint.max_connections",
        "endpoint.trusted_proxies[0]",
        "endpoint.trusted_proxies[2]",
    ]
