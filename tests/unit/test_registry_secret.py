"""`[registry] password = { secret = "NAME" }`: parsed by field path beside `password_file`,
the canonical form carries the reference only, apply's check names `registry.password`, and
`registry_auth` takes the secret's value (read by the caller) without ever showing it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from config.canonical import spec_to_dict
from config.errors import SpecError
from config.parse import parse_spec, spec_from_dict
from config.secret_ref import SecretRef
from config.spec import Registry
from daemon.integrations.registry import (
    RegistryCredentialsError,
    registry_auth,
    registry_problems,
)
from daemon.runtime.interface import RegistryAuth
from daemon.secrets.references import (
    SecretUnavailable,
    reference_problems,
    resolve_secret,
    secret_references,
)
from daemon.secrets.store import SecretStore

BASE = 'name = "a"\nimage = "localhost/x:1"\nport = 8080\n[endpoint]\nport = 18080\n'
VALUE = "pa55:w0rd with spaces"


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        parse_spec(BASE + text)
    return caught.value.messages()


def test_a_password_reference_parses_and_round_trips() -> None:
    s = parse_spec(BASE + '[registry]\nusername = "deploy"\npassword = { secret = "reg" }\n')
    assert s.registry == Registry(username="deploy", password=SecretRef("reg"))
    canonical = spec_to_dict(s)
    assert canonical["registry"] == {"username": "deploy", "password": {"secret": "reg"}}
    assert spec_from_dict(json.loads(json.dumps(canonical))) == s
    assert secret_references(s) == [("registry.password", SecretRef("reg"))]


@pytest.mark.parametrize(
    ("registry", "expected"),
    [
        (
            'username = "u"\npassword = { secret = "reg" }\npassword_file = "/p"',
            "registry.password: cannot be combined with registry.password_file",
        ),
        (
            'auth_file = "/a.json"\npassword = { secret = "reg" }',
            "registry.auth_file: cannot be combined with",
        ),
        ('password = { secret = "reg" }', "registry.username: required with registry.password"),
        ('username = "u"\npassword = "hunter2"', "registry.password: must be a reference"),
        ('username = "u"\npassword = { secret = "Bad Name" }', "registry.password: secret name"),
        ('username = "u"', "registry.password_file: required with registry.username"),
    ],
)
def test_bad_password_references_name_their_field(registry: str, expected: str) -> None:
    found = problems(f"[registry]\n{registry}\n")
    assert any(m.startswith(expected) for m in found), found
    assert not any("hunter2" in m for m in found)


def test_registry_auth_takes_the_secret_value() -> None:
    registry = Registry(username="deploy", password=SecretRef("reg"))
    auth = registry_auth(registry, (), f"{VALUE}\n")  # one trailing newline dropped
    assert auth == RegistryAuth(username="deploy", password=VALUE)
    assert VALUE not in repr(auth) and VALUE not in str(auth)
    assert registry_problems(registry, ()) == []  # no file to look at


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "the secret's value was not read"),
        ("\n", "is empty"),
        (f"{VALUE}\nsecond line", "must hold the password alone, on one line"),
    ],
)
def test_bad_secret_values_are_refused_unshown(value: str | None, reason: str) -> None:
    with pytest.raises(RegistryCredentialsError) as caught:
        registry_auth(Registry(username="u", password=SecretRef("reg")), (), value)
    assert str(caught.value) == f"registry.password: {reason}"


async def test_apply_check_and_resolution_name_registry_password(tmp_path: Path) -> None:
    store = SecretStore(tmp_path / "s")
    await store.open()
    s = parse_spec(BASE + '[registry]\nusername = "u"\npassword = { secret = "reg" }\n')
    assert reference_problems(s, store) == [
        'registry.password.secret: no such secret "reg" (berth secret create reg)'
    ]
    ref = SecretRef("reg")
    with pytest.raises(SecretUnavailable, match=r"^registry\.password\.secret: no such secret"):
        await resolve_secret(store, ref, "registry.password")
    with pytest.raises(SecretUnavailable, match="keeps no secrets"):
        await resolve_secret(None, ref, "registry.password")
    await store.create("reg", VALUE.encode())
    assert reference_problems(s, store) == []
    value = await resolve_secret(store, ref, "registry.password")
    assert value == VALUE and VALUE not in repr(value)
