"""`[endpoint.auth]` and the endpoint's bind default (issue 13, points 1 and 6)."""

from __future__ import annotations

import pytest

from config.errors import SpecError
from config.parse import parse_spec, spec_from_dict, spec_id, spec_to_dict, template_id
from config.secret_ref import SecretRef
from config.spec import BasicUser, DeploymentSpec, EndpointAuth

BASE = 'name = "a"\nimage = "localhost/x:1"\nport = 80\n[endpoint]\nport = 18080\n'


def spec(extra: str = "") -> DeploymentSpec:
    return parse_spec(BASE + extra)


def problems(extra: str) -> list[str]:
    with pytest.raises(SpecError) as err:
        spec(extra)
    return err.value.messages()


def test_auth_parses_references_only() -> None:
    s = spec(
        "[endpoint.auth]\n"
        'api_keys = [{ secret = "team-key" }, { secret = "ci-key" }]\n'
        'basic = [{ user = "alice", password = { secret = "alice-pw" } }]\n'
        "forward_auth = true\n"
    )
    assert s.endpoint.auth == EndpointAuth(
        api_keys=(SecretRef("team-key"), SecretRef("ci-key")),
        basic=(BasicUser("alice", SecretRef("alice-pw")),),
        forward_auth=True,
    )
    d = spec_to_dict(s, defaults=False)["endpoint"]
    assert d["auth"] == {
        "api_keys": [{"secret": "team-key"}, {"secret": "ci-key"}],
        "basic": [{"user": "alice", "password": {"secret": "alice-pw"}}],
        "forward_auth": True,
    }
    assert spec_from_dict(spec_to_dict(s)) == s
    assert spec_from_dict(spec_to_dict(s, defaults=False)) == s


def test_empty_auth_table_turns_auth_on() -> None:
    s = spec("[endpoint.auth]\n")
    assert s.endpoint.auth == EndpointAuth()
    assert spec_to_dict(s, defaults=False)["endpoint"]["auth"] == {}
    assert spec_id(s) != spec_id(spec())
    assert spec_from_dict(spec_to_dict(s, defaults=False)) == s


def test_auth_changes_no_container() -> None:
    assert template_id(spec('[endpoint.auth]\napi_keys = [{ secret = "k" }]\n')) == template_id(
        spec()
    )


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            '[endpoint.auth]\napi_keys = ["sk-literal"]\n',
            "endpoint.auth.api_keys[0]: ",
        ),
        (
            '[endpoint.auth]\napi_keys = { secret = "k" }\n',
            "endpoint.auth.api_keys: must be a list",
        ),
        (
            '[endpoint.auth]\napi_keys = [{ secret = "k" }, { secret = "k" }]\n',
            'endpoint.auth.api_keys[1]: secret "k" is listed twice',
        ),
        ('[endpoint.auth]\napi_keys = [{ secret = "Bad/Name" }]\n', "endpoint.auth.api_keys[0]"),
        (
            '[endpoint.auth]\nbasic = [{ user = "alice" }]\n',
            "endpoint.auth.basic[0].password: required",
        ),
        (
            '[endpoint.auth]\nbasic = [{ password = { secret = "p" } }]\n',
            "endpoint.auth.basic[0].user: required",
        ),
        (
            '[endpoint.auth]\nbasic = [{ user = "a:b", password = { secret = "p" } }]\n',
            "endpoint.auth.basic[0].user: must be 1-64 characters, no colon",
        ),
        (
            '[endpoint.auth]\nbasic = [{ user = "al", password = "hunter2" }]\n',
            "endpoint.auth.basic[0].password: ",
        ),
        (
            '[endpoint.auth]\nbasic = [{ user = "al", password = { secret = "p" } },'
            ' { user = "al", password = { secret = "q" } }]\n',
            'endpoint.auth.basic[1].user: user "al" is listed twice',
        ),
        (
            "[endpoint.auth]\nforward_auth = 1\n",
            "endpoint.auth.forward_auth: must be true or false",
        ),
        ("[endpoint.auth]\nkeys = true\n", "endpoint.auth.keys: unknown key"),
        ('auth = "on"\n', "endpoint.auth: must be a table"),
    ],
)
def test_auth_problems_name_their_field(extra: str, expected: str) -> None:
    got = problems(extra)
    assert any(p.startswith(expected) for p in got), got


def test_a_literal_key_is_refused_and_not_echoed_as_a_reference() -> None:
    [p] = problems('[endpoint.auth]\napi_keys = ["sk-literal"]\n')
    assert p.startswith("endpoint.auth.api_keys[0]:") and "secret" in p


# Safe defaults (issue 13, point 6).


def test_bind_defaults_to_loopback_without_auth() -> None:
    s = spec()
    assert s.endpoint.bind == "127.0.0.1" and not s.endpoint.bind_given


def test_bind_defaults_to_all_addresses_with_auth() -> None:
    s = spec("[endpoint.auth]\n")
    assert s.endpoint.bind == "0.0.0.0" and not s.endpoint.bind_given


@pytest.mark.parametrize("bind", ["0.0.0.0", "127.0.0.1", "::1"])
def test_a_written_bind_is_kept_with_or_without_auth(bind: str) -> None:
    for extra in ("", "[endpoint.auth]\n"):
        s = spec(f'bind = "{bind}"\n' + extra)
        assert s.endpoint.bind == bind and s.endpoint.bind_given
        assert spec_to_dict(s, defaults=False)["endpoint"]["bind"] == bind
        assert spec_from_dict(spec_to_dict(s, defaults=False)) == s
        assert spec_from_dict(spec_to_dict(s)) == s


def test_unwritten_bind_round_trips_as_unwritten() -> None:
    for extra in ("", "[endpoint.auth]\n"):
        s = spec(extra)
        assert "bind" not in spec_to_dict(s)["endpoint"]
        assert spec_from_dict(spec_to_dict(s)) == s


# The ids the same texts had before issue 13 (computed with the previous canonical form):
# a spec without a bind keeps its id, and so does one that wrote 127.0.0.1 or ::1. Only a
# written "0.0.0.0" (which the old form left out as the default) gets a new one: it no
# longer means what an unwritten bind means.
@pytest.mark.parametrize(
    ("extra", "old_id", "same"),
    [
        ("", "487792a4726e", True),
        ('bind = "127.0.0.1"\n', "150826e8710f", True),
        ('bind = "::1"\n', "3e5fbb351eb1", True),
        ('bind = "0.0.0.0"\n', "487792a4726e", False),
    ],
)
def test_spec_ids_from_before_the_bind_default_change(extra: str, old_id: str, same: bool) -> None:
    assert (spec_id(spec(extra)) == old_id) is same
