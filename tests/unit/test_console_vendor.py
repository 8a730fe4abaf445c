"""The vendored uPlot (daemon/console/static/vendor/uplot/): the files are the ones its README
names by hash, its MIT licence travels with it, and pyproject's package data ships every
static file in a wheel (an editable install reads them from the source tree)."""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONSOLE = ROOT / "daemon" / "console"
VENDOR = CONSOLE / "static" / "vendor" / "uplot"


def test_vendored_files_match_the_hashes_in_their_readme() -> None:
    readme = (VENDOR / "README.md").read_text()
    listed = dict(
        (name, digest) for digest, name in re.findall(r"^ {4}([0-9a-f]{64})  (\S+)$", readme, re.M)
    )
    assert set(listed) == {"uPlot.iife.min.js", "uPlot.min.css", "LICENSE"}
    for name, digest in listed.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name
    assert re.search(r"uplot@1\.6\.\d+", readme)
    assert "integrity sha512-" in readme


def test_uplot_licence_is_mit_and_kept() -> None:
    licence = (VENDOR / "LICENSE").read_text()
    assert "The MIT License" in licence
    assert "Leon Sorokin" in licence


def test_package_data_ships_every_static_file() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["daemon.console"]
    shipped = {p for pattern in patterns for p in CONSOLE.glob(pattern) if p.is_file()}
    present = {p for p in (CONSOLE / "static").rglob("*") if p.is_file()}
    assert present, "no static files found"
    assert present <= shipped, sorted(str(p.relative_to(CONSOLE)) for p in present - shipped)
