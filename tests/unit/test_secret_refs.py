"""`[env] NAME = { secret = "SECRET" }`: parsing by field path, the canonical form and ids
carry the reference only, what a spec asks of the store, and the literal-token warning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from config.canonical import spec_id, spec_to_dict, template_id
from config.errors import SpecError
from config.parse import parse_spec, spec_from_dict
from config.secret_ref import SecretRef
from daemon.reconcile.replica_spec import MissingSecretValue, container_env
from daemon.secrets.references import (
    SecretText,
    SecretUnavailable,
    env_secret_names,
    reference_problems,
    resolve_env_secrets,
    secret_references,
    secret_template_id,
)
from daemon.secrets.store import SecretStore
from daemon.secrets.tokens import literal_token_warnings, token_kind

BASE = 'name = "a"\nimage = "localhost/x:1"\nport = 8080\n[endpoint]\nport = 18080\n[env]\n'


def spec(env: str) -> object:
    return parse_spec(BASE + env)


def problems(env: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        parse_spec(BASE + env)
    return caught.value.messages()


def test_a_reference_parses_and_round_trips() -> None:
    s = parse_spec(BASE + 'HF_TOKEN = { secret = "hf-token" }\nMODEL = "tiny"\n')
    assert s.env == {"HF_TOKEN": SecretRef("hf-token"), "MODEL": "tiny"}
    canonical = spec_to_dict(s)
    assert canonical["env"] == {"HF_TOKEN": {"secret": "hf-token"}, "MODEL": "tiny"}
    assert spec_from_dict(json.loads(json.dumps(canonical))) == s
    assert str(s.env["HF_TOKEN"]) == '{ secret = "hf-token" }'


def test_ids_follow_the_reference_not_a_value() -> None:
    one = parse_spec(BASE + 'T = { secret = "one" }\n')
    same = parse_spec(BASE + "T = {secret='one'}\n")
    other = parse_spec(BASE + 'T = { secret = "two" }\n')
    assert spec_id(one) == spec_id(same) and template_id(one) == template_id(same)
    assert spec_id(one) != spec_id(other) and template_id(one) != template_id(other)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ('X = { secret = "a", other = 1 }', 'env.X: a table must be { secret = "NAME" }'),
        ("X = {}", 'env.X: a table must be { secret = "NAME" }'),
        ("X = { value = 'v' }", 'env.X: a table must be { secret = "NAME" }'),
        ('X = { secret = "Bad Name" }', "env.X: secret name must be 1-63 characters"),
        ("X = { secret = 3 }", "env.X: secret name must be"),
        ("X = 1.5", 'env.X: must be a string (quote it) or an integer, or { secret = "NAME" }'),
        ('"1X" = { secret = "a" }', "env.1X: not a valid environment variable name"),
    ],
)
def test_bad_references_name_their_field(env: str, expected: str) -> None:
    assert any(m.startswith(expected) for m in problems(env)), problems(env)


def test_references_are_found_with_their_paths() -> None:
    s = parse_spec(BASE + 'B = { secret = "two" }\nA = { secret = "one" }\nC = "lit"\n')
    assert secret_references(s) == [("env.A", SecretRef("one")), ("env.B", SecretRef("two"))]
    assert env_secret_names(s) == ["one", "two"]


async def test_reference_problems_and_resolution(tmp_path: Path) -> None:
    store = SecretStore(tmp_path / "s")
    await store.open()
    s = parse_spec(BASE + 'HF_TOKEN = { secret = "hf-token" }\n')
    assert reference_problems(s, store) == [
        'env.HF_TOKEN.secret: no such secret "hf-token" (berth secret create hf-token)'
    ]
    with pytest.raises(SecretUnavailable, match='env.HF_TOKEN.secret: no such secret "hf-token"'):
        await resolve_env_secrets(s, store)
    await store.create("hf-token", b"hf_value")
    assert reference_problems(s, store) == []
    values = await resolve_env_secrets(s, store)
    assert values == {"hf-token": "hf_value"} and isinstance(values["hf-token"], SecretText)
    assert "hf_value" not in repr(values)
    env = container_env(s.env, values)
    assert env == {"HF_TOKEN": "hf_value"} and "hf_value" not in repr(env)
    with pytest.raises(MissingSecretValue):
        container_env(s.env, {})


async def test_the_template_id_changes_with_the_value_only_when_env_uses_one(
    tmp_path: Path,
) -> None:
    store = SecretStore(tmp_path / "s")
    await store.open()
    plain = parse_spec(BASE + 'A = "1"\n')
    assert secret_template_id(template_id(plain), plain, store) == template_id(plain)
    s = parse_spec(BASE + 'A = { secret = "k" }\n')
    missing = secret_template_id(template_id(s), s, store)
    await store.create("k", b"one")
    first = secret_template_id(template_id(s), s, store)
    await store.create("k", b"two")
    second = secret_template_id(template_id(s), s, store)
    assert len({missing, first, second, template_id(s)}) == 4
    await store.create("k", b"one")
    assert secret_template_id(template_id(s), s, store) == first


TOKENS = {
    "hf": "hf_" + "aBcD3fGh1jKlMn0pQrStUvWxYz12",
    "openai": "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8t",
    "github": "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8",
    "github_pat": "github_pat_" + "11ABCDEFG0123456789_abcdefghijklmnop",
    "slack": "xoxb-" + "1234567890-abcdefghij",
    "aws": "AKIA" + "IOSFODNN7EXAMPLE",
    "random": "Zq8Xv2Lr5Tn9Wb3Yh6Kd1Mf4",
}


@pytest.mark.parametrize("kind", sorted(TOKENS))
def test_a_literal_token_is_warned_about_without_its_value(kind: str) -> None:
    value = TOKENS[kind]
    (warning,) = literal_token_warnings({"SOME_VALUE": value})
    assert warning.startswith("env.SOME_VALUE: the literal value looks like")
    assert 'SOME_VALUE = { secret = "NAME" }' in warning
    assert value not in warning and value[-8:] not in warning


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MODEL", "mistralai/Mistral-7B-Instruct-v0.2"),
        ("MODEL", "Qwen/Qwen2.5-Coder-32B-Instruct-AWQ"),
        ("MODEL_PATH", "/models/TheBloke/Llama-2-7B-Chat-GGUF/llama-2-7b-chat.Q4_K_M.gguf"),
        ("REVISION", "0123456789abcdef0123456789abcdef01234567"),
        ("TOKENIZERS_PARALLELISM", "false"),
        ("MAX_TOKENS", "4096"),
        ("HF_TOKEN", "${HF_TOKEN}"),
        ("URL", "https://example.com/v1/chat/completions?model=aB3dE5fG7hI9"),
        ("MESSAGE", "hello world, this is a long but ordinary sentence"),
    ],
)
def test_ordinary_values_are_not_warned_about(name: str, value: str) -> None:
    assert token_kind(name, value) is None


def test_a_variable_named_like_a_credential_is_warned_about() -> None:
    (warning,) = literal_token_warnings({"API_KEY": "changeme123", "OTHER": "changeme123"})
    assert warning.startswith("env.API_KEY:") and "changeme123" not in warning


def test_references_are_not_warned_about() -> None:
    assert literal_token_warnings({"HF_TOKEN": SecretRef("hf-token")}) == []
