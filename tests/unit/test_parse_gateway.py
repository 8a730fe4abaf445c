"""`[gateway]` in a spec, `[replicas] scale_to_zero_after`, and berthd.toml's `[gateway]`:
defaults, values, the canonical form, every problem named by its field path."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.canonical import spec_id, template_id
from config.errors import SpecError
from config.parse import parse_spec, spec_from_dict, spec_to_dict
from config.parse_gateway import DEFAULT_MAX_BODY, GatewaySettings
from config.secret_ref import SecretRef
from config.settings import load_settings
from config.spec import Gateway

BASE = 'name = "demo"\nimage = "localhost/demo:1"\nport = 8080\n[endpoint]\nport = 18080\n'


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    return info.value.messages()


def test_absent_is_none_and_leaves_the_ids() -> None:
    spec = parse_spec(BASE)
    assert spec.gateway is None
    assert spec.replicas.scale_to_zero_after is None
    d = spec_to_dict(spec)
    assert "gateway" not in d
    assert d["replicas"] == {"min": 1, "max": 1}


def test_defaults() -> None:
    spec = parse_spec(BASE + '[gateway]\nmodels = ["llama-3.1-8b"]\n')
    assert spec.gateway == Gateway(models=("llama-3.1-8b",))
    g = spec.gateway
    assert (g.rewrite_model, g.priority, g.group, g.min_idle) == (None, 0, None, 0.0)
    assert spec_to_dict(spec, defaults=False)["gateway"] == {"models": ["llama-3.1-8b"]}
    assert spec_to_dict(spec)["gateway"] == {"models": ["llama-3.1-8b"], "priority": 0,
                                             "min_idle": "0s"}  # fmt: skip


def test_values_and_round_trip() -> None:
    text = BASE + (
        '[replicas]\nmin = 0\nmax = 2\nscale_to_zero_after = "10m"\n'
        '[gateway]\nmodels = ["llama-3.1-8b", "llama3.1", "org/Model:Q4_K_M"]\n'
        'rewrite_model = "meta-llama/Llama-3.1-8B Instruct"\npriority = -3\ngroup = "chat"\n'
        'min_idle = "30s"\n'
    )
    spec = parse_spec(text)
    assert spec.gateway == Gateway(
        models=("llama-3.1-8b", "llama3.1", "org/Model:Q4_K_M"),
        rewrite_model="meta-llama/Llama-3.1-8B Instruct",
        priority=-3,
        group="chat",
        min_idle=30.0,
    )
    assert spec.replicas.scale_to_zero_after == 600.0
    d = spec_to_dict(spec)
    assert d["replicas"] == {"min": 0, "max": 2, "scale_to_zero_after": "10m"}
    for full in (True, False):
        assert spec_from_dict(spec_to_dict(spec, defaults=full)) == spec


def test_gateway_changes_the_spec_id_not_the_template() -> None:
    plain = parse_spec(BASE)
    routed = parse_spec(BASE + '[gateway]\nmodels = ["m"]\n')
    assert spec_id(plain) != spec_id(routed)
    assert template_id(plain) == template_id(routed)


def test_every_problem_named() -> None:
    text = BASE + (
        '[gateway]\nmodels = ["ok", "with space", "", 7, "ok", "' + "x" * 129 + '"]\n'
        'rewrite_model = ""\npriority = 1.5\ngroup = "-bad"\nmin_idle = 3\nbogus = 1\n'
    )
    got = problems(text)
    expected = [
        "gateway.models[1]: must be 1-128 characters, no whitespace",
        "gateway.models[2]: must be 1-128 characters",
        "gateway.models[3]: must be a string",
        'gateway.models[4]: "ok" is listed twice (first at gateway.models[0])',
        "gateway.models[5]: must be 1-128 characters",
        "gateway.rewrite_model: must be a string of 1-256 characters",
        "gateway.priority: must be an integer",
        "gateway.group: must be 1-63 characters",
        "gateway.min_idle: must be a duration string",
        "gateway.bogus: unknown key",
    ]
    for want in expected:
        assert any(m.startswith(want) for m in got), (want, got)
    assert len(got) == len(expected), got


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ("[]", "gateway.models: must name at least one model"),
        ('"m"', "gateway.models: must be a list of model names"),
        (str([f"m{i}" for i in range(65)]).replace("'", '"'), "gateway.models: at most 64"),
        ('["tab\\tname"]', "gateway.models[0]: must be 1-128 characters, no whitespace"),
    ],
)
def test_models_must_be_a_list_of_names(models: str, message: str) -> None:
    got = problems(BASE + f"[gateway]\nmodels = {models}\n")
    assert len(got) == 1 and got[0].startswith(message), got


def test_models_required() -> None:
    assert problems(BASE + "[gateway]\npriority = 1\n") == ["gateway.models: required"]


@pytest.mark.parametrize(
    "replicas",
    ["min = 1\nmax = 2\n", "count = 1\n", "max = 3\n", ""],
)
def test_scale_to_zero_after_needs_min_zero(replicas: str) -> None:
    text = BASE + f'[replicas]\n{replicas}scale_to_zero_after = "10m"\n'
    got = problems(text)
    assert len(got) == 1, got
    assert got[0].startswith("replicas.scale_to_zero_after: only with replicas.min = 0"), got


@pytest.mark.parametrize(
    ("value", "message"),
    [("0s", "must be longer than 0s"), ("745h", "must be at most"), ("10", "needs a unit")],
)
def test_scale_to_zero_after_values(value: str, message: str) -> None:
    got = problems(BASE + f'[replicas]\nmin = 0\nscale_to_zero_after = "{value}"\n')
    assert len(got) == 1 and got[0].startswith("replicas.scale_to_zero_after:"), got
    assert message in got[0], got


def test_scale_to_zero_after_with_a_bad_min_names_only_min() -> None:
    got = problems(BASE + '[replicas]\nmin = -1\nscale_to_zero_after = "1m"\n')
    assert len(got) == 1 and got[0].startswith("replicas.min:"), got


# berthd.toml


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "berthd.toml"
    path.write_text(text)
    return path


def test_settings_without_gateway(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, ""), {}, {}).gateway is None


def test_settings_gateway(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        '[gateway]\nlisten = "127.0.0.1:8000"\nmax_body = "1Mi"\n'
        '[gateway.auth]\napi_keys = [{ secret = "gw-key" }]\n'
        '[gateway.tls]\ncert = "/etc/berth/credentials/gw.crt"\n'
        'key = "/etc/berth/credentials/gw.key"\n',
    )
    g = load_settings(config, {}, {}).gateway
    assert g is not None
    assert (g.host, g.port, g.listen, g.max_body) == ("127.0.0.1", 8000, "127.0.0.1:8000", 2**20)
    assert g.auth is not None and g.auth.api_keys == (SecretRef("gw-key"),)
    assert g.tls is not None and g.tls.cert == "/etc/berth/credentials/gw.crt"


def test_settings_gateway_defaults_and_ipv6(tmp_path: Path) -> None:
    g = load_settings(write(tmp_path, '[gateway]\nlisten = "[::1]:8000"\n'), {}, {}).gateway
    assert g == GatewaySettings(host="::1", port=8000)
    assert (g.max_body, g.auth, g.tls, g.listen) == (DEFAULT_MAX_BODY, None, None, "[::1]:8000")


def test_settings_gateway_every_problem_named(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        '[gateway]\nlisten = "localhost:8000"\nmax_body = "10"\nbogus = 1\n'
        '[gateway.auth]\napi_keys = "k"\n[gateway.tls]\ncert = "relative.crt"\n',
    )
    with pytest.raises(SpecError) as info:
        load_settings(config, {}, {})
    got = info.value.messages()
    expected = [
        "gateway.listen: must name an IP address and a port",
        "gateway.max_body: must be at least 1Ki",
        "gateway.bogus: unknown key",
        "gateway.auth.api_keys: must be a list of secret references",
        "gateway.tls.cert: ",
        "gateway.tls.key: required",
    ]
    for want in expected:
        assert any(m.startswith(want) for m in got), (want, got)
    assert len(got) == len(expected), got


@pytest.mark.parametrize("listen", ['"8000"', '":99999"', "8000", '"::1:8000"'])
def test_settings_gateway_listen(tmp_path: Path, listen: str) -> None:
    with pytest.raises(SpecError) as info:
        load_settings(write(tmp_path, f"[gateway]\nlisten = {listen}\n"), {}, {})
    got = info.value.messages()
    assert len(got) == 1 and got[0].startswith("gateway.listen: "), got


@pytest.mark.parametrize(
    ("listen", "host"),
    [('"[::1]:8000"', "::1"), ('":8000"', "0.0.0.0"), ('"127.0.0.1:8000"', "127.0.0.1")],
)
def test_settings_gateway_listen_forms(tmp_path: Path, listen: str, host: str) -> None:
    """As [console] and [metrics] read them: ":PORT" is every IPv4 address."""
    settings = load_settings(write(tmp_path, f"[gateway]\nlisten = {listen}\n"), {}, {})
    assert settings.gateway is not None
    assert (settings.gateway.host, settings.gateway.port) == (host, 8000)


def test_settings_gateway_listen_required(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        load_settings(write(tmp_path, '[gateway]\nmax_body = "1Mi"\n'), {}, {})
    assert info.value.messages() == ["gateway.listen: required"]


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ("8000", 'gateway.listen: must be a string such as "127.0.0.1:8000" (got 8000)'),
        (
            '"127.0.0.1"',
            'gateway.listen: must be "host:port" with a port from 1 to 65535, such as '
            '"127.0.0.1:8000" (got "127.0.0.1")',
        ),
        ('"::1:8000"', 'gateway.listen: write an IPv6 host in brackets: "[::1]:8000"'),
    ],
)
def test_settings_gateway_listen_examples_are_the_gateways(
    tmp_path: Path, listen: str, message: str
) -> None:
    """The shared host:port check's example is [metrics]' port 9464: the gateway's is 8000."""
    with pytest.raises(SpecError) as info:
        load_settings(write(tmp_path, f"[gateway]\nlisten = {listen}\n"), {}, {})
    assert info.value.messages()[0].startswith(message), info.value.messages()


def test_settings_gateway_names_a_spec_key_as_a_specs(tmp_path: Path) -> None:
    """`models` (and the rest of a spec's [gateway]) written in berthd.toml is told where it
    belongs, not just "unknown key"."""
    text = '[gateway]\nlisten = "127.0.0.1:8000"\nmodels = ["m"]\nmin_idle = "1s"\nbogus = 1\n'
    with pytest.raises(SpecError) as info:
        load_settings(write(tmp_path, text), {}, {})
    assert info.value.messages() == [
        "gateway.models: a deployment spec's [gateway] key, not berthd.toml's: put it in the "
        "spec of the deployment that serves the models (docs/gateway.md)",
        "gateway.min_idle: a deployment spec's [gateway] key, not berthd.toml's: put it in "
        "the spec of the deployment that serves the models (docs/gateway.md)",
        "gateway.bogus: unknown key",
    ]


def test_spec_gateway_names_a_settings_key_as_berthds() -> None:
    got = problems(
        BASE + '[gateway]\nmodels = ["m"]\nlisten = "127.0.0.1:8000"\n'
        '[gateway.auth]\napi_keys = ["sk-literal"]\n'
    )
    assert got == [
        "gateway.listen: berthd.toml's [gateway] key, not a spec's: where the gateway "
        "listens and how it is protected is berthd's, for every model (docs/gateway.md)",
        "gateway.auth: berthd.toml's [gateway] key, not a spec's: where the gateway "
        "listens and how it is protected is berthd's, for every model (docs/gateway.md)",
    ]
    assert not any("sk-literal" in m for m in got)  # an auth table is not shown back
