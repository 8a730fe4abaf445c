"""`export(spec, origin, target) -> Bundle`: the one entry point of `berth export`.

The target's module builds its files and says what it could not carry (`Built`); this
module adds the README (`daemon.export.readme`) after them. Like the modules it calls, it
is pure and deterministic: the same spec, origin and target give the same files, bytes
and order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from config.spec import DeploymentSpec
from daemon.export import kserve, kubernetes, quadlet, readme
from daemon.export.bundle import Built, Bundle, ExportedFile, Origin, Target

BUILDERS: Mapping[Target, Callable[[DeploymentSpec, Origin], Built]] = {
    Target.KUBERNETES: kubernetes.build,
    Target.KSERVE: kserve.build,
    Target.QUADLET: quadlet.build,
}


def export(spec: DeploymentSpec, origin: Origin, target: Target) -> Bundle:
    """The target's files, then README.md; `left_out` is the target's list, in its order."""
    built = BUILDERS[target](spec, origin)
    names = [f.name for f in built.files]
    if readme.README in names or len(set(names)) != len(names):
        raise ValueError(f"{target} export named a file twice or wrote {readme.README}: {names}")
    text = readme.render(spec.name, origin, target, built)
    files = (*built.files, ExportedFile(readme.README, text))
    return Bundle(target=target, origin=origin, files=files, left_out=built.left_out)
