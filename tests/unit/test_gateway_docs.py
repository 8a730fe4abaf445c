"""docs/gateway.md's TOML is real: each full spec in it parses (and its `[gateway]` and
`[replicas]` say what the text around it claims), its berthd.toml loads, and the full
example's three deployments claim no model name twice. A doc that drifts from the parser
fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from config.parse import parse_spec
from config.settings import load_settings
from config.spec import DeploymentSpec

DOC = Path(__file__).resolve().parents[2] / "docs" / "gateway.md"
GIB = 1024**3


FULL_EXAMPLE = "## A full example"


def toml_blocks(text: str | None = None) -> list[str]:
    return re.findall(r"```toml\n(.*?)```", DOC.read_text() if text is None else text, flags=re.S)


def specs(full_example: bool = True) -> dict[str, DeploymentSpec]:
    """The full example's specs, or (`full_example=False`) those before it."""
    before, _, after = DOC.read_text().partition(FULL_EXAMPLE)
    found = {}
    for block in toml_blocks(after if full_example else before):
        if block.startswith("name = "):
            spec = parse_spec(block, source="docs/gateway.md")
            found[spec.name] = spec
    return found


def test_the_try_it_spec_parses_and_needs_no_gpu() -> None:
    """The spec that tries the gateway from `make run`: berth's model server, no GPU."""
    (spec,) = specs(full_example=False).values()
    assert spec.image == "localhost/berth-model-server:1" and spec.resources.gpus == 0
    assert spec.resources.gpu_memory is None
    assert spec.gateway is not None and spec.gateway.models == ("tiny-chat", "tiny")
    assert spec.replicas.min == 0 and spec.replicas.scale_to_zero_after == 30


def test_the_full_example_parses_and_packs_as_the_text_says() -> None:
    example = specs()
    assert sorted(example) == ["chat", "coder", "embed"]
    names = [n for s in example.values() for n in (s.gateway.models if s.gateway else ())]
    assert len(names) == len(set(names)) == 6
    memory = {name: s.resources.gpu_memory for name, s in example.items()}
    assert memory == {"chat": 16 * GIB, "coder": 9 * GIB, "embed": 2 * GIB}
    assert memory["chat"] + memory["coder"] > 24 * GIB  # the two LLMs never fit together
    assert memory["chat"] + memory["embed"] <= 24 * GIB
    assert memory["coder"] + memory["embed"] <= 24 * GIB
    for spec in example.values():
        assert spec.gateway is not None and spec.replicas.min == 0
        assert spec.replicas.scale_to_zero_after is not None
    chat, embed = example["chat"].gateway, example["embed"].gateway
    assert chat is not None and embed is not None
    assert chat.rewrite_model == "Qwen/Qwen2.5-7B-Instruct" and chat.min_idle == 30
    assert embed.priority > chat.priority and embed.group == chat.group == "rag"


@pytest.mark.parametrize("which", ["reference", "example"])
def test_the_berthd_toml_blocks_load(which: str, tmp_path: Path) -> None:
    blocks = [b for b in toml_blocks() if b.startswith("[gateway]\nlisten")]
    assert len(blocks) == 2, "the reference table and the example's berthd.toml"
    text = blocks[0] if which == "reference" else blocks[1]
    config = tmp_path / "berthd.toml"
    config.write_text(text)
    settings = load_settings(config, {}, {})
    assert settings.gateway is not None
    assert (settings.gateway.host, settings.gateway.port) == ("127.0.0.1", 8000)
    assert settings.gateway.max_body == 32 * 1024 * 1024
    assert (settings.gateway.auth is not None) == (which == "reference")


def test_the_spec_fragment_parses_inside_a_spec() -> None:
    (fragment,) = [b for b in toml_blocks() if b.startswith("[gateway]\nmodels")]
    spec = parse_spec(
        'name = "x"\nimage = "localhost/x:1"\nport = 8000\n[endpoint]\nport = 18000\n' + fragment
    )
    assert spec.gateway is not None and spec.gateway.models == ("qwen2.5-7b", "qwen")
    assert spec.replicas.scale_to_zero_after == 600


def test_the_admin_routes_named_in_operations_md_are_the_admin_apis() -> None:
    """operations.md names admin routes as admin-api.md does: every one under /v1/."""
    text = (DOC.parent / "operations.md").read_text()
    named = re.findall(r"`(?:GET|POST|DELETE) (/[^`?]*)", text)
    assert "/v1/gateway" in named
    assert [route for route in named if not route.startswith("/v1/")] == []
