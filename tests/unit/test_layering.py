"""The house's rules, checked on the source (STYLE.md #12, #15; docs/architecture.md).

- Layers: daemon -> proxy -> config, daemon -> config; the proxy never imports the daemon.
- Inside daemon/: each sub-package imports only the sub-packages its `__init__` names
  (`ALLOWED` below mirrors them); no sub-package imports a root module (berthd, main,
  observability); the root holds at most six modules.
- No import cycle among the modules of config, proxy and daemon, counting every import:
  top level, inside functions and under TYPE_CHECKING, and `from pkg import name` as an
  import of `pkg`'s `__init__` when `name` is not a module (as Python runs it).
- Only one module imports each outside system (podman-py, pynvml, sqlite-utils).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("config", "proxy", "daemon")
FORBIDDEN = {"config": {"proxy", "daemon"}, "proxy": {"daemon"}}
SOLE_IMPORTERS = {
    "podman": {"daemon/runtime/podman.py"},
    "sqlite_utils": {"daemon/store/database.py"},
    "pynvml": {"daemon/gpu/nvml.py"},
}
# What each daemon sub-package may import, besides the standard library, outside packages,
# `config`, `proxy` where named, and `daemon.__version__`. Keep in step with the
# sub-packages' docstrings and docs/architecture.md.
ALLOWED: dict[str, set[str]] = {
    "http": set(),
    "system": set(),
    "store": set(),
    "gpu": set(),
    "cli": {"export"},
    "export": set(),
    "secrets": set(),
    "health": {"http"},
    "runtime": {"http"},
    "integrations": {"runtime"},
    "metrics": {"proxy", "runtime", "store", "gpu", "http"},
    "scaling": {"proxy", "metrics", "gpu"},
    "reconcile": {
        "proxy",
        "runtime",
        "store",
        "gpu",
        "health",
        "scaling",
        "metrics",
        "integrations",
        "secrets",
    },
    "gateway": {"proxy", "reconcile", "store"},
    "api": {
        "http",
        "reconcile",
        "store",
        "runtime",
        "gpu",
        "integrations",
        "metrics",
        "secrets",
        "gateway",
    },
    "console": {"proxy", "http", "api", "store", "secrets", "metrics", "reconcile", "system"},
}
MAX_ROOT_MODULES = 6


def module_files() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


def imports_of(module: str, path: Path, mods: dict[str, Path]) -> Iterator[str]:
    """Every project module `module` imports, wherever the import statement stands."""
    base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                stem = base[: len(base) - node.level + 1]
                prefix = ".".join(stem + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            targets = [
                f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in mods else prefix for a in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target and target != module:
                yield target


def import_graph() -> dict[str, set[str]]:
    mods = module_files()
    return {m: set(imports_of(m, path, mods)) for m, path in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def part(module: str) -> str:
    """`config`, `proxy`, a daemon sub-package's name, or `root` for berthd's own modules."""
    pieces = module.split(".")
    if pieces[0] != "daemon":
        return pieces[0]
    if len(pieces) == 1:
        return "daemon"  # daemon/__init__.py: the version
    return pieces[1] if (ROOT / "daemon" / pieces[1]).is_dir() else "root"


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
        for package in PACKAGES
        for path in package_files(package)
        if library in imported_packages(path)
    }
    assert importers <= SOLE_IMPORTERS[library], importers


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {
        "a": {"b"},
        "b": {"c"},
        "c": {"a", "d"},
        "d": set(),
        "e": {"e2"},
        "e2": {"e"},
    }
    assert sorted(cycles(graph)) == [["a", "b", "c"], ["e", "e2"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_hidden_imports_count(tmp_path: Path) -> None:
    """TYPE_CHECKING and function-level imports are edges; so is a package's own __init__."""
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from daemon.x import T\n"
        "def f():\n    from daemon.y import g\n"
        "from daemon import z\n"
        "from daemon import __version__\n"
    )
    mods = {"daemon": tmp_path, "daemon.x": source, "daemon.y": source, "daemon.z": source}
    assert set(imports_of("daemon.w", source, mods)) == {
        "daemon.x",
        "daemon.y",
        "daemon.z",
        "daemon",
    }


def test_sub_packages_import_only_what_they_may() -> None:
    offenders = []
    for module, targets in import_graph().items():
        source = part(module)
        if source not in ALLOWED:
            continue
        for target in targets:
            dest = part(target)
            if dest in (source, "config") or (dest == "daemon" and target == "daemon"):
                continue
            if dest not in ALLOWED[source]:
                offenders.append(f"{module} imports {target}")
    assert not offenders, offenders


def test_every_sub_package_is_ruled_and_says_what_it_owns() -> None:
    sub_packages = sorted(
        p.name for p in (ROOT / "daemon").iterdir() if (p / "__init__.py").exists()
    )
    assert sub_packages == sorted(ALLOWED)
    for name in sub_packages:
        doc = ast.get_docstring(ast.parse((ROOT / "daemon" / name / "__init__.py").read_text()))
        assert doc and len(doc) > 80 and "import" in doc, f"daemon/{name}/__init__.py"


def test_daemon_root_holds_only_the_composition() -> None:
    root_modules = sorted(p.name for p in (ROOT / "daemon").glob("*.py") if p.name != "__init__.py")
    assert len(root_modules) <= MAX_ROOT_MODULES, root_modules
