"""Golden files: every `config/examples/*.toml` exported to every target, byte for byte.

The expected bundles live under tests/data/export/golden/EXAMPLE/TARGET/ (one file per
exported file, README.md among them). A change to a target module shows up here as the
list of files that differ, with the first difference; when the change is meant, regenerate
with `BERTH_UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_export_golden.py` and read
the diff in `git diff tests/data/export/golden` before committing it.

The origin is the example's file as the CLI's `--file` names it from the repository root
(`config/examples/NAME.toml`), so the files do not depend on where the checkout is.
"""

from __future__ import annotations

import difflib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from config.canonical import spec_id
from config.parse import parse_spec
from daemon.export.bundle import Bundle, Origin, Target
from daemon.export.targets import export

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "config" / "examples").glob("*.toml"))
GOLDEN = REPO / "tests" / "data" / "export" / "golden"
UPDATE = os.environ.get("BERTH_UPDATE_GOLDEN") == "1"


def exported(example: Path, target: Target) -> Bundle:
    source = str(example.relative_to(REPO))
    spec = parse_spec(example.read_text(), source=source)
    # As `berth export --file` names it: the file's name alone.
    return export(spec, Origin(spec_id=spec_id(spec), file=example.name), target)


def test_every_example_is_covered() -> None:
    assert len(EXAMPLES) >= 7
    if not UPDATE:  # no golden directory for an example that is gone
        assert sorted(p.name for p in GOLDEN.iterdir()) == sorted(p.stem for p in EXAMPLES)


@pytest.mark.parametrize("target", list(Target), ids=str)
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_the_bundle_equals_its_golden_files(example: Path, target: Target) -> None:
    bundle = exported(example, target)
    directory = GOLDEN / example.stem / target.value
    made = {f.name: f.text for f in bundle.files}
    if UPDATE:
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.iterdir():
            if stale.name not in made:
                stale.unlink()
        for name, text in made.items():
            (directory / name).write_text(text, encoding="utf-8")
    golden = {p.name: p.read_text(encoding="utf-8") for p in sorted(directory.glob("*"))}
    missing = sorted(set(made) - set(golden))
    extra = sorted(set(golden) - set(made))
    differ = sorted(n for n in set(made) & set(golden) if made[n] != golden[n])
    if missing or extra or differ:
        lines = [f"{example.stem} -> {target}: the export differs from {directory}"]
        lines += [f"  not in the golden files: {n}" for n in missing]
        lines += [f"  no longer exported: {n}" for n in extra]
        lines += [f"  differs: {n}" for n in differ]
        if differ:
            first = differ[0]
            diff = difflib.unified_diff(
                golden[first].splitlines(),
                made[first].splitlines(),
                f"golden/{first}",
                f"exported/{first}",
                lineterm="",
            )
            lines += ["", *list(diff)[:40]]
        lines.append("(if the change is meant: BERTH_UPDATE_GOLDEN=1, then review the diff)")
        pytest.fail("\n".join(lines), pytrace=False)


@pytest.mark.parametrize("target", list(Target), ids=str)
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_the_readme_says_where_it_came_from_and_lists_every_field_left_out(
    example: Path, target: Target
) -> None:
    bundle = exported(example, target)
    names = [f.name for f in bundle.files]
    assert names[-1] == "README.md" and len(set(names)) == len(names)
    assert all("/" not in n and not n.startswith(".") for n in names)
    assert all(f.text.endswith("\n") for f in bundle.files)
    readme = bundle.files[-1].text
    assert f"Exported by berth export from {bundle.origin.describe()}." in readme
    assert readme.count("## Apply") == 1
    not_carried = readme[readme.index("## Not carried over") :]
    for item in bundle.left_out:
        assert f"- `{item.field}`: {item.reason.splitlines()[0]}" in not_carried
    for name in names[:-1]:
        assert f"- `{name}`" in readme
    assert exported(example, target) == bundle  # deterministic, object for object


# Every example to every target in a fresh interpreter: a digest of all the bytes.
_DIGEST = """
import hashlib, pathlib
from tests.unit.test_export_golden import EXAMPLES, exported
from daemon.export.bundle import Target
h = hashlib.sha256()
for example in EXAMPLES:
    for target in Target:
        for f in exported(example, target).files:
            h.update(f.name.encode() + b"\\0" + f.text.encode() + b"\\0")
print(h.hexdigest())
"""


def test_the_same_bytes_under_other_hash_seeds() -> None:
    """Set and dict order of strings changes with PYTHONHASHSEED from one process to the
    next; nothing an export writes may depend on it."""
    digests = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", _DIGEST],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        digests.add(done.stdout.strip())
    assert len(digests) == 1 and len(digests.pop()) == 64
