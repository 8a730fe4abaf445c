"""What an export is made of: the target, the spec's origin, the files and what was left out.

`daemon.export.targets.export(spec, origin, target)` is the one entry point: it asks the
target's module (`build(spec, origin) -> Built`) for its files and left-out fields, and adds
the README (`daemon.export.readme`) that says how to apply them and what did not carry.

Every `LeftOut` names the spec field by its path (as a refused spec's problems do) and says
what the target lacks and what to use instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Target(StrEnum):
    KUBERNETES = "kubernetes"
    KSERVE = "kserve"
    QUADLET = "quadlet"


@dataclass(frozen=True)
class Origin:
    """Where the exported spec came from: a deployment's revision on berthd, or a file."""

    spec_id: str  # config.canonical.spec_id of the exported spec
    deployment_id: str | None = None  # None: exported from a file (`--file`)
    revision: int | None = None
    file: str | None = None  # the spec file's path as given, with `--file`

    def describe(self) -> str:
        """One line for comments and the README: 'deployment echo revision 3 (spec_id X)'."""
        if self.revision is not None:
            where = f"revision {self.revision}"
            if self.deployment_id is not None:
                where += f" of deployment id {self.deployment_id}"
        else:
            where = f"spec file {self.file or '<stdin>'}"
        return f"{where} (spec_id {self.spec_id})"


@dataclass(frozen=True)
class LeftOut:
    """A spec field (by its path, e.g. `endpoint.auth.api_keys`) the target cannot express:
    `reason` says what is lost and what to use there instead."""

    field: str
    reason: str

    def line(self) -> str:
        return f"{self.field}: {self.reason}"


@dataclass(frozen=True)
class ExportedFile:
    name: str  # a plain file name inside the output directory, e.g. "deployment.yaml"
    text: str  # ends in a newline


@dataclass(frozen=True)
class Built:
    """A target module's answer, before the README is added."""

    files: tuple[ExportedFile, ...]
    left_out: tuple[LeftOut, ...]
    apply_steps: tuple[str, ...]  # shell lines (or sentences) that apply the files, in order
    notes: tuple[str, ...] = ()  # what the user must know or set before applying


@dataclass(frozen=True)
class Bundle:
    target: Target
    origin: Origin
    files: tuple[ExportedFile, ...]  # the target's files, then README.md
    left_out: tuple[LeftOut, ...]
