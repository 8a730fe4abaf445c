"""The house's arrows run one way: daemon -> proxy -> config, daemon -> config (STYLE.md #12).

Also: only one module imports each outside system (podman-py, pynvml, sqlite-utils).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"config": {"proxy", "daemon"}, "proxy": {"daemon"}}
SOLE_IMPORTERS = {
    "podman": {"daemon/podman_runtime.py"},
    "sqlite_utils": {"daemon/store.py"},
    "pynvml": {"daemon/gpu_nvml.py"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def package_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layers_import_only_downwards(package: str) -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {sorted(imported_packages(path) & FORBIDDEN[package])}"
        for path in package_files(package)
        if imported_packages(path) & FORBIDDEN[package]
    ]
    assert not offenders, offenders


@pytest.mark.parametrize("library", sorted(SOLE_IMPORTERS))
def test_one_module_imports_each_outside_system(library: str) -> None:
    importers = {
        str(path.relative_to(ROOT))
        for package in ("config", "proxy", "daemon")
        for path in package_files(package)
        if library in imported_packages(path)
    }
    assert importers <= SOLE_IMPORTERS[library], importers
