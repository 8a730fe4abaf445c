"""Canonical TOML for the console's spec view and diffs (daemon/console/toml_text.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomli

from config.canonical import spec_to_dict
from config.parse import parse_spec
from daemon.console.toml_text import canonical_toml, to_toml

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "config" / "examples").glob("*.toml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_canonical_toml_reads_back_as_the_canonical_form(path: Path) -> None:
    spec = parse_spec(path.read_text(), source=str(path))
    text = canonical_toml(path.read_text())
    assert tomli.loads(text) == spec_to_dict(spec)
    assert parse_spec(text) == spec  # and means the same spec


def test_the_same_meaning_gives_the_same_text() -> None:
    a = 'name = "w"\nimage = "i:1"\nport = 80\n[endpoint]\nport = 18000\n[replicas]\ncount = 2\n'
    b = 'port = 80\nname="w"\nimage="i:1"\n[replicas]\nmin = 2\nmax = 2\n[endpoint]\nport = 18000\n'
    assert canonical_toml(a) == canonical_toml(b)


def test_a_spec_that_does_not_parse_is_shown_as_written() -> None:
    assert canonical_toml("name = [") == "name = ["


def test_strings_keys_and_arrays_of_tables() -> None:
    data = {"a": 'q"\n\\', "weird key": 1, "t": {"x": [1, 2], "u": {"y": True}},
            "arr": [{"n": 1.5}, {"n": 2.0}], "inline": [{"k": "v"}, 3]}  # fmt: skip
    assert tomli.loads(to_toml(data)) == data
