"""`berth export NAME|--file SPEC.toml --to kubernetes|kserve|quadlet [--out DIR]`: a
deployment's spec as another engine's manifests (docs/export.md).

The spec comes from berthd (NAME: the active revision, `GET /v1/deployments/NAME`; with
`--revision N`, `GET /v1/deployments/NAME/revisions/N`) or from a file (`--file`: only the
spec's own checks, nothing of this host; the admin socket is never opened). The export
itself is `daemon.export.targets.export`, pure; this module does the I/O:

- without `--out`: stdout gets the whole export. Kubernetes and KServe: one YAML stream
  (`berth export x --to kubernetes | kubectl apply -f -`) led by the README as comments.
  Quadlet: the README, then each file, each after a `# ==> FILE <==` line.
- with `--out DIR`: DIR is made if missing and each file is written atomically (a
  temporary file in DIR, then a rename), README.md among them. A file already in DIR that
  this export did not write is named on stderr and left alone (an older export's file
  that `kubectl apply -f DIR` would still apply). stdout lists the files written; stderr
  says how many fields did not carry, and where they are listed.

A spec that does not parse is refused as `berth apply` refuses one: every problem, exit 1,
nothing written. A `--file` origin is named by the file's name alone, so the bytes are the
same from whatever directory it is exported. A NAME berthd no longer serves but whose
history it keeps (`berth rm`) is told how to export one of its revisions.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from config.canonical import spec_id
from config.errors import SpecError
from config.parse import parse_spec
from config.spec import DeploymentSpec
from daemon.cli import format as fmt
from daemon.cli.client import AdminClient, ApiError, CliError, deployment_path
from daemon.cli.commands import read_spec_file
from daemon.export.bundle import Bundle, Origin, Target
from daemon.export.readme import README
from daemon.export.targets import export
from daemon.export.yaml_text import comment_lines, stream

_STREAMED = (Target.KUBERNETES, Target.KSERVE)


def cmd_export(client: AdminClient, args: argparse.Namespace) -> int:
    target = Target(args.to)
    if args.revision is not None and args.file is not None:
        raise CliError("--revision goes with a deployment NAME, not --file", exit_code=2)
    if args.revision is not None and args.revision < 1:
        raise CliError("--revision must be 1 or more", exit_code=2)
    if args.file is not None:
        loaded = _from_file(args.file)
    else:
        loaded = _from_berthd(client, args.name, args.revision)
    if loaded is None:
        return 1
    spec, origin = loaded
    bundle = export(spec, origin, target)
    if args.out is None:
        sys.stdout.write(stdout_text(bundle))
        return 0
    return _write_out(bundle, Path(args.out))


def stdout_text(bundle: Bundle) -> str:
    """The whole export as one text: a YAML stream, or the files one after another."""
    readme = next(f for f in bundle.files if f.name == README)
    others = [f for f in bundle.files if f.name != README]
    if bundle.target in _STREAMED:
        return comment_lines(readme.text.splitlines()) + "---\n" + stream(f.text for f in others)
    return "\n".join(f"# ==> {f.name} <==\n{f.text}" for f in (readme, *others))


# -- where the spec comes from ----------------------------------------------------------


def _from_file(path: str) -> tuple[DeploymentSpec, Origin] | None:
    spec = _parsed(read_spec_file(path), path)
    if spec is None:
        return None
    # The file's name only: the bytes do not change with the directory it is exported from.
    return spec, Origin(spec_id=spec_id(spec), file=Path(path).name)


def _from_berthd(
    client: AdminClient, name: str, revision: int | None
) -> tuple[DeploymentSpec, Origin] | None:
    if revision is None:
        try:
            answer = client.call("GET", deployment_path(name))
        except ApiError as exc:
            if exc.status == 404:
                raise CliError(exc.message + _kept_revisions_hint(client, name)) from None
            raise
        deployment_id = _text(answer.get("deployment_id"))
    else:
        answer = client.call("GET", deployment_path(name, "revisions", str(revision)))
        deployment_id = _deployment_id(client, name)
    text, number = answer.get("spec"), answer.get("revision")
    if not isinstance(text, str) or not isinstance(number, int):
        raise CliError(f"berthd's answer for {name} carries no spec text or revision")
    spec = _parsed(text, f"{name} revision {number}")
    if spec is None:
        return None
    return spec, Origin(spec_id=spec_id(spec), deployment_id=deployment_id, revision=number)


def _kept_revisions_hint(client: AdminClient, name: str) -> str:
    """For a removed deployment (its history is kept): how to export one of its revisions."""
    try:
        history = client.call("GET", deployment_path(name, "history"))
    except ApiError:
        return ""
    numbers = [r["revision"] for r in history if isinstance(r, dict) and "revision" in r]
    if not numbers:
        return ""
    return (
        f" (it was removed; its revisions are kept: berth export {name} --revision "
        f"{max(numbers)} --to ..., or berth history {name})"
    )


def _deployment_id(client: AdminClient, name: str) -> str | None:
    """The deployment's id for the annotations; None once it is removed (its revisions
    are still kept, and one can still be exported)."""
    try:
        answer = client.call("GET", deployment_path(name))
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise
    return _text(answer.get("deployment_id"))


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _parsed(text: str, source: str) -> DeploymentSpec | None:
    """The spec, or None after printing its problems as `berth apply` does."""
    try:
        return parse_spec(text, source=source)
    except SpecError as exc:
        count = len(exc.problems)
        lines = [f"berth: {source}: spec refused, {fmt.plural(count, 'problem')}:"]
        lines += [f"  {problem}" for problem in exc.messages()]
        print("\n".join(lines), file=sys.stderr)
        return None


# -- writing a directory ----------------------------------------------------------------


def _write_out(bundle: Bundle, out: Path) -> int:
    if out.exists() and not out.is_dir():
        raise CliError(f"{out} is not a directory: --out names the directory to write into")
    try:
        out.mkdir(parents=True, exist_ok=True)
        before = sorted(p.name for p in out.iterdir())
    except OSError as exc:
        raise CliError(f"cannot make {out}: {exc.strerror or exc}") from None
    written = []
    for exported in bundle.files:
        path = out / exported.name
        _write_atomically(path, exported.text)
        written.append(path)
    names = {f.name for f in bundle.files}
    for stale in (n for n in before if n not in names):
        print(
            f"berth: {out / stale}: not written by this export, left as it is "
            "(remove it if an older export wrote it)",
            file=sys.stderr,
        )
    print("\n".join(str(p) for p in written))
    if bundle.left_out:
        count = fmt.plural(len(bundle.left_out), "field")
        print(
            f"berth: {count} could not be carried to {bundle.target}: see {out / README}",
            file=sys.stderr,
        )
    return 0


def _write_atomically(path: Path, text: str) -> None:
    """Write a temporary file next to `path` and rename it over: a reader (or a crash)
    sees the old file or the new one, never half of one. Mode 0666 less the umask."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from None


# -- the parser ----------------------------------------------------------------------------


def add_export_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """`berth export ...` on the main parser's subcommands."""
    help_text = "a deployment's spec as Kubernetes, KServe or Quadlet manifests"
    p = sub.add_parser(
        "export",
        help=help_text,
        description=(
            "Export a deployment's active spec (or --revision N, or a --file without "
            "berthd) as another engine's manifests, with a README saying how to apply them "
            "and what did not carry. Deterministic: the same spec gives the same bytes."
        ),
        parents=[common],
    )
    p.set_defaults(command=cmd_export)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("name", metavar="NAME", nargs="?", help="a deployment on berthd")
    source.add_argument(
        "--file", metavar="SPEC.toml", help="export this spec file instead (berthd not asked)"
    )
    p.add_argument("--revision", type=int, metavar="N", help="that revision of NAME's spec")
    p.add_argument(
        "--to", required=True, choices=[t.value for t in Target], help="the target engine"
    )
    p.add_argument("--out", metavar="DIR", help="write one file per object and README.md into DIR")
