"""Specs and parsed objects for the export tests (tests/unit/test_export_*.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from config.parse import parse_spec
from config.spec import DeploymentSpec
from daemon.export.bundle import Built
from tests.export_schemas import validate

EXAMPLES = sorted(Path(__file__).parents[1].joinpath("config", "examples").glob("*.toml"))

BASE = """
name = "{name}"
image = "ghcr.io/acme/{name}:1"
port = {port}
{top}
[endpoint]
port = 18000
{endpoint}
{tables}
"""


def spec_of(
    tables: str = "", top: str = "", endpoint: str = "", *, name: str = "app", port: int = 8000
) -> DeploymentSpec:
    """A small spec (`name`, its image, `port`, endpoint port 18000) with more TOML: `top`
    at the top level, `endpoint` in [endpoint], `tables` after it."""
    text = BASE.format(name=name, port=port, top=top, endpoint=endpoint, tables=tables)
    return parse_spec(text, source="test.toml")


def objects(built: Built) -> dict[str, dict[str, Any]]:
    """Each exported YAML file's one object, by file name, validated strictly first."""
    out = {}
    for f in built.files:
        (doc,) = yaml.safe_load_all(f.text)
        validate(doc)
        out[f.name] = doc
    return out
