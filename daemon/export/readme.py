"""The README.md of an export: where it came from, how to apply it, what to set first, and
every spec field that did not carry.

The text is Markdown made only of the target module's answer (`Built`) and the origin, in
their order: the same export gives the same bytes. Sections:

- the title and the origin line (`Exported by berth export from ...`), as each file's
  first comment says it;
- "Files": the target's files, in the bundle's order;
- "Before you apply": the target's notes (placeholders to fill, secrets to create);
- "Apply": the target's apply steps, in order. A step that begins with a capital letter
  is a sentence and is written as a paragraph; any other step is a shell line (`kubectl
  apply -f DIR`), and consecutive shell lines make one `sh` code block to copy;
- "Not carried over": every `LeftOut` as `field: reason`, or a line saying nothing was
  left out. This list is the whole of what the export could not express: the files'
  comments repeat parts of it next to the objects concerned.
"""

from __future__ import annotations

from collections.abc import Iterable

from daemon.export.bundle import Built, Origin, Target

README = "README.md"

_TARGET_TITLES = {
    Target.KUBERNETES: "Kubernetes",
    Target.KSERVE: "KServe",
    Target.QUADLET: "Podman Quadlet",
}


def origin_line(origin: Origin) -> str:
    """The line every exported file (and the README) starts with."""
    return f"Exported by berth export from {origin.describe()}"


def render(name: str, origin: Origin, target: Target, built: Built) -> str:
    """The README's text for deployment `name` exported to `target` (ends in a newline)."""
    lines = [f"# {name}: berth export to {_TARGET_TITLES[target]}", "", origin_line(origin) + "."]
    lines += ["", "## Files", ""]
    lines += [f"- `{f.name}`" for f in built.files]
    lines.append(f"- `{README}` (this file)")
    if built.notes:
        lines += ["", "## Before you apply", ""]
        lines += _bullets(built.notes)
    lines += ["", "## Apply", ""]
    if target is Target.QUADLET:
        lines += [
            "Run these in the directory that holds the files (`berth export ... --out DIR`).",
            "",
        ]
    elif any("DIR" in step for step in built.apply_steps):
        lines += [
            "DIR is the directory holding these files (`berth export ... --out DIR`). Printed "
            "to stdout instead (no `--out`), the export is one YAML stream: after the steps "
            "before it, `berth export ... | kubectl apply -f -` applies it whole.",
            "",
        ]
    lines += _steps(built.apply_steps) or ["Nothing to run: see the files above."]
    lines += ["", "## Not carried over", ""]
    if built.left_out:
        lines.append(
            f"What the spec sets that {_TARGET_TITLES[target]} cannot express here, by the "
            "spec's field path (the files carry the same lines as comments):"
        )
        lines.append("")
        lines += _bullets(f"`{item.field}`: {item.reason}" for item in built.left_out)
    else:
        lines.append("Nothing: every field the spec sets has an equivalent in these files.")
    return "\n".join(lines) + "\n"


def _bullets(items: Iterable[str]) -> list[str]:
    out = []
    for item in items:
        first, *rest = item.splitlines() or [""]
        out.append(f"- {first}")
        out += [f"  {line}".rstrip() for line in rest]
    return out


def _steps(steps: Iterable[str]) -> list[str]:
    """Sentences as paragraphs, runs of shell lines as one code block each."""
    blocks: list[list[str]] = []
    shell = False
    for step in steps:
        if step[:1].isupper():
            blocks.append(step.splitlines())
            shell = False
        elif shell:
            blocks[-1][-1:-1] = step.splitlines()  # before the closing fence
        else:
            blocks.append(["```sh", *step.splitlines(), "```"])
            shell = True
    return [line for i, block in enumerate(blocks) for line in ([""] if i else []) + block]
