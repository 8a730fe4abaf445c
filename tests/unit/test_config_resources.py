"""`[resources]` shm_size, ipc and ulimits: good values, every bad one by its field path,
their canonical form, and the template id they are part of."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.errors import SpecError
from config.parse import parse_spec, spec_from_dict, spec_id, spec_to_dict, template_id
from config.spec import RLIM_INFINITY, IpcMode, Resources, Ulimit
from tests.unit.test_config_parse import make, problems_of

MIB = 1024**2
GIB = 1024**3


def resources(body: str) -> str:
    return make(f"[resources]\n{body}")


def ulimits(body: str) -> str:
    return make(f"[resources.ulimits]\n{body}")


GOOD = [
    ("nothing asked", make(), Resources()),
    ("shm size", resources('shm_size = "16Gi"'), Resources(shm_size=16 * GIB)),
    ("shm bytes", resources("shm_size = 1048576"), Resources(shm_size=MIB)),
    ("shm decimal", resources('shm_size = "2G"'), Resources(shm_size=2 * 1000**3)),
    ("shm at most 1Ti", resources('shm_size = "1Ti"'), Resources(shm_size=1024**4)),
    (
        "shm equal to memory",
        resources('memory = "1Gi"\nshm_size = "1Gi"'),
        Resources(memory=GIB, shm_size=GIB),
    ),
    ("ipc private", resources('ipc = "private"'), Resources(ipc=IpcMode.PRIVATE)),
    ("ipc shareable", resources('ipc = "shareable"'), Resources(ipc=IpcMode.SHAREABLE)),
    (
        "memlock unlimited",
        ulimits('memlock = "unlimited"'),
        Resources(ulimits={"memlock": Ulimit(RLIM_INFINITY, RLIM_INFINITY)}),
    ),
    (
        "memlock size",
        ulimits('memlock = "64Mi"'),
        Resources(ulimits={"memlock": Ulimit(64 * MIB, 64 * MIB)}),
    ),
    (
        "memlock zero bytes",
        ulimits("memlock = 0"),
        Resources(ulimits={"memlock": Ulimit(0, 0)}),
    ),
    (
        "nofile one value",
        ulimits("nofile = 65536"),
        Resources(ulimits={"nofile": Ulimit(65536, 65536)}),
    ),
    (
        "nofile soft and hard",
        ulimits("nofile = { soft = 1024, hard = 1048576 }"),
        Resources(ulimits={"nofile": Ulimit(1024, 1048576)}),
    ),
    (
        "stack soft, hard unlimited",
        ulimits('stack = { soft = "8Mi", hard = "unlimited" }'),
        Resources(ulimits={"stack": Ulimit(8 * MIB, RLIM_INFINITY)}),
    ),
    (
        "all three, with the rest",
        make(
            '[resources]\nmemory = "32Gi"\nshm_size = "16Gi"\nipc = "shareable"\n'
            '[resources.ulimits]\nstack = "64Mi"\nmemlock = "unlimited"\nnofile = 4096\n'
        ),
        Resources(
            memory=32 * GIB,
            shm_size=16 * GIB,
            ipc=IpcMode.SHAREABLE,
            ulimits={
                "memlock": Ulimit(RLIM_INFINITY, RLIM_INFINITY),
                "nofile": Ulimit(4096, 4096),
                "stack": Ulimit(64 * MIB, 64 * MIB),
            },
        ),
    ),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in GOOD], ids=[c[0] for c in GOOD])
def test_good_values(text: str, expected: Resources) -> None:
    spec = parse_spec(text)
    assert spec.resources == expected
    assert spec_from_dict(spec_to_dict(spec)) == spec
    assert spec_from_dict(spec_to_dict(spec, defaults=False)) == spec


# (case id, spec text, the whole problem: "field.path: message (got VALUE)")
BAD = [
    (
        "shm not a size",
        resources('shm_size = "x"'),
        'resources.shm_size: not a size; write e.g. "512Mi", "8Gi", "2G" or a number of bytes'
        ' (got "x")',
    ),
    (
        "shm unit",
        resources('shm_size = "16GB"'),
        'resources.shm_size: unknown size unit "GB"; use Ki, Mi, Gi, Ti (1024s) or k, M, G, T'
        ' (1000s) (got "16GB")',
    ),
    (
        "shm bool",
        resources("shm_size = true"),
        'resources.shm_size: must be a size such as "512Mi" or "8Gi" (got true)',
    ),
    (
        "shm negative",
        resources("shm_size = -1"),
        "resources.shm_size: a size cannot be negative (got -1)",
    ),
    (
        "shm too small",
        resources('shm_size = "512Ki"'),
        'resources.shm_size: must be at least 1Mi (got "512Ki")',
    ),
    (
        "shm too big",
        resources('shm_size = "2Ti"'),
        'resources.shm_size: must be at most 1Ti (got "2Ti")',
    ),
    (
        "shm over memory",
        resources('memory = "8Gi"\nshm_size = "16Gi"'),
        "resources.shm_size: must be at most resources.memory (8Gi): /dev/shm is memory and "
        'counts against the replica\'s limit (got "16Gi")',
    ),
    (
        "ipc host",
        resources('ipc = "host"'),
        'resources.ipc: must be "private" or "shareable": a replica never joins the host\'s '
        'IPC namespace (got "host")',
    ),
    (
        "ipc other",
        resources('ipc = "none"'),
        'resources.ipc: must be "private" or "shareable" (got "none")',
    ),
    (
        "ipc not a string",
        resources("ipc = 1"),
        'resources.ipc: must be "private" or "shareable" (got 1)',
    ),
    (
        "ulimits not a table",
        resources("ulimits = 4"),
        "resources.ulimits: must be a table ([resources.ulimits]) (got 4)",
    ),
    (
        "ulimit unknown",
        ulimits("nproc = 4096"),
        "resources.ulimits.nproc: unknown key: berth sets memlock, nofile and stack (the others "
        "keep the host's defaults) (got 4096)",
    ),
    (
        "memlock negative",
        ulimits("memlock = -1"),
        'resources.ulimits.memlock: cannot be negative: write "unlimited" for no limit (got -1)',
    ),
    (
        "memlock not a size",
        ulimits('memlock = "lots"'),
        'resources.ulimits.memlock: not a size; write e.g. "512Mi", "8Gi", "2G" or a number of '
        'bytes (got "lots")',
    ),
    (
        "memlock bool",
        ulimits("memlock = true"),
        'resources.ulimits.memlock: must be a size such as "64Mi", a number of bytes, '
        '"unlimited", or a table { soft = ..., hard = ... } (got true)',
    ),
    (
        "memlock too big",
        ulimits('memlock = "2Ti"'),
        'resources.ulimits.memlock: must be at most 1Ti (or "unlimited") (got "2Ti")',
    ),
    (
        "stack too small",
        ulimits('stack = "64Ki"'),
        'resources.ulimits.stack: must be at least 1Mi (got "64Ki")',
    ),
    (
        "nofile unlimited",
        ulimits('nofile = "unlimited"'),
        'resources.ulimits.nofile: cannot be "unlimited": the kernel caps open files (at most '
        '1048576) (got "unlimited")',
    ),
    (
        "nofile too many",
        ulimits("nofile = 2000000"),
        "resources.ulimits.nofile: must be between 64 and 1048576 (got 2000000)",
    ),
    (
        "nofile too few",
        ulimits("nofile = 8"),
        "resources.ulimits.nofile: must be between 64 and 1048576 (got 8)",
    ),
    (
        "nofile a string",
        ulimits('nofile = "4096"'),
        "resources.ulimits.nofile: must be an integer (open files), or a table "
        '{ soft = ..., hard = ... } (got "4096")',
    ),
    (
        "nofile soft over hard",
        ulimits("nofile = { soft = 4096, hard = 1024 }"),
        "resources.ulimits.nofile.soft: must be <= resources.ulimits.nofile.hard (4096 > 1024)",
    ),
    (
        "stack soft over hard",
        ulimits('stack = { soft = "unlimited", hard = "8Mi" }'),
        "resources.ulimits.stack.soft: must be <= resources.ulimits.stack.hard (unlimited > 8Mi)",
    ),
    (
        "table without hard",
        ulimits("nofile = { soft = 1024 }"),
        "resources.ulimits.nofile.hard: required",
    ),
    (
        "table bad value",
        ulimits("nofile = { soft = 1024, hard = 1.5 }"),
        "resources.ulimits.nofile.hard: must be an integer (open files) (got 1.5)",
    ),
    (
        "table unknown key",
        ulimits("memlock = { soft = 0, hard = 0, max = 1 }"),
        "resources.ulimits.memlock.max: unknown key",
    ),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_values_name_their_field(text: str, expected: str) -> None:
    assert problems_of(text) == [expected]


def test_case_ids_are_unique() -> None:
    assert len({c[0] for c in GOOD}) == len(GOOD)
    assert len({c[0] for c in BAD}) == len(BAD)


def test_every_problem_is_reported_at_once() -> None:
    text = make(
        '[resources]\nmemory = "1Gi"\nshm_size = "2Gi"\nipc = "host"\n'
        "[resources.ulimits]\n"
        'memlock = -1\nnofile = "unlimited"\nstack = { soft = "16Mi", hard = "8Mi" }\n'
        "core = 0\n"
    )
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    assert sorted(p.path for p in info.value.problems) == [
        "resources.ipc",
        "resources.shm_size",
        "resources.ulimits.core",
        "resources.ulimits.memlock",
        "resources.ulimits.nofile",
        "resources.ulimits.stack.soft",
    ]


def test_shm_size_is_not_checked_against_a_memory_that_is_wrong() -> None:
    # One problem, at memory: "must be at most resources.memory" would pile on it.
    assert problems_of(resources('memory = "1Ki"\nshm_size = "1Gi"')) == [
        'resources.memory: must be at least 6Mi (Podman\'s minimum) (got "1Ki")'
    ]


def test_canonical_form() -> None:
    spec = parse_spec(
        make(
            '[resources]\nshm_size = "16384Mi"\n'
            "[resources.ulimits]\n"
            "nofile = { soft = 1024, hard = 1024 }\nmemlock = 0\n"
            'stack = { soft = 8388608, hard = "unlimited" }\n'
        )
    )
    assert spec_to_dict(spec, defaults=False)["resources"] == {
        "shm_size": "16Gi",
        "ulimits": {"memlock": "0", "nofile": 1024, "stack": {"soft": "8Mi", "hard": "unlimited"}},
    }
    assert spec_to_dict(parse_spec(make()))["resources"]["ipc"] == "private"


SHAPES = [
    resources('shm_size = "1Gi"'),
    resources('shm_size = "2Gi"'),
    resources('ipc = "shareable"'),
    ulimits("nofile = 4096"),
    ulimits("nofile = { soft = 1024, hard = 4096 }"),
    ulimits('memlock = "unlimited"'),
    ulimits('stack = "16Mi"'),
]


def test_template_id_changes_with_shm_ipc_and_ulimits() -> None:
    """They shape the container: a change replaces the replicas."""
    ids = [template_id(parse_spec(t)) for t in [make(), *SHAPES]]
    assert len(set(ids)) == len(ids)


def test_spelled_out_defaults_keep_the_ids() -> None:
    spelled = parse_spec(resources('ipc = "private"\n[resources.ulimits]\n'))
    plain = parse_spec(make())
    assert (spec_id(spelled), template_id(spelled)) == (spec_id(plain), template_id(plain))


def test_the_example_in_the_spec_reference_parses() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "spec.md").read_text()
    section = doc.split("### Shared memory, IPC and ulimits", 1)[1]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    spec = parse_spec(make(example))
    assert spec.resources.shm_size == 16 * GIB
    assert spec.resources.ulimits["stack"] == Ulimit(8 * MIB, RLIM_INFINITY)
