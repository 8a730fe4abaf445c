"""GPU placement and the apply-time GPU check, as tables."""

from __future__ import annotations

import pytest

from config.spec import Resources
from daemon.gpu.fake import GiB, fake_gpus
from daemon.gpu.model import GpuInfo
from daemon.gpu.placement import (
    Assignment,
    GpuRequest,
    Placed,
    Unplaceable,
    apply_problems,
    place,
    surge_warnings,
)

G = [f"nvidia.com/gpu={i}" for i in range(4)]
TWO = fake_gpus(2)  # 24Gi each
MIXED = [
    GpuInfo(0, "small", G[0], memory_total_bytes=12 * GiB),
    GpuInfo(1, "big", G[1], memory_total_bytes=48 * GiB),
    GpuInfo(2, "mid", G[2], memory_total_bytes=24 * GiB),
]


def whole(replica: str, *devices: str) -> Assignment:
    return Assignment(replica, devices)


def shared(replica: str, device: str, gib: int) -> Assignment:
    return Assignment(replica, (device,), gpu_memory=gib * GiB)


PLACE_CASES: list[tuple[str, GpuRequest, list[GpuInfo], list[Assignment], Placed | Unplaceable]] = [
    ("no GPU asked", GpuRequest(), [], [], Placed(())),
    ("first free GPU", GpuRequest(gpus=1), TWO, [], Placed((G[0],))),
    ("skips a held GPU", GpuRequest(gpus=1), TWO, [whole("web/a", G[0])], Placed((G[1],))),
    ("two at once", GpuRequest(gpus=2), fake_gpus(3), [whole("web/a", G[1])], Placed((G[0], G[2]))),
    (
        "never one whole GPU to two replicas",
        GpuRequest(gpus=2),
        TWO,
        [whole("web/abc123", G[0])],
        Unplaceable("needs 2 GPUs, 1 free (GPU 0 held by web/abc123)"),
    ),
    (
        "never a whole GPU that shared replicas use",
        GpuRequest(gpus=1),
        TWO,
        [whole("web/a", G[0]), shared("chat/x", G[1], 2), shared("chat/y", G[1], 2)],
        Unplaceable("needs 1 GPU, 0 free (GPU 0 held by web/a; GPU 1 shared by chat/x, chat/y)"),
    ),
    (
        "no GPU on the host",
        GpuRequest(gpus=1),
        [],
        [],
        Unplaceable("needs a GPU, and this host has none that berth can use"),
    ),
    (
        "shared on an empty host: lowest index",
        GpuRequest(gpu_memory=10 * GiB),
        TWO,
        [],
        Placed((G[0],)),
    ),
    (
        "shared packs onto a GPU already shared",
        GpuRequest(gpu_memory=10 * GiB),
        TWO,
        [shared("chat/x", G[1], 10)],
        Placed((G[1],)),
    ),
    (
        "shared moves on when the declared VRAM does not fit",
        GpuRequest(gpu_memory=10 * GiB),
        TWO,
        [shared("chat/x", G[0], 10), shared("chat/y", G[0], 10)],
        Placed((G[1],)),
    ),
    (
        "shared never onto a whole GPU",
        GpuRequest(gpu_memory=1 * GiB),
        TWO,
        [whole("web/a", G[0])],
        Placed((G[1],)),
    ),
    (
        "shared: best fit among free GPUs keeps the big one",
        GpuRequest(gpu_memory=10 * GiB),
        MIXED,
        [],
        Placed((G[0],)),
    ),
    (
        "shared: a shared GPU before a tighter empty one",
        GpuRequest(gpu_memory=10 * GiB),
        MIXED,
        [shared("chat/x", G[1], 30)],
        Placed((G[1],)),
    ),
    (
        "shared: nowhere fits",
        GpuRequest(gpu_memory=20 * GiB),
        TWO,
        [whole("web/a", G[0]), shared("chat/x", G[1], 8)],
        Unplaceable(
            "needs 20Gi of GPU memory, no GPU has it "
            "(GPU 0 held by web/a; GPU 1 has 16Gi unclaimed)"
        ),
    ),
    (
        "shared: unknown memory cannot be shared",
        GpuRequest(gpu_memory=1 * GiB),
        fake_gpus(1, memory=None),
        [],
        Unplaceable("needs 1Gi of GPU memory, no GPU has it (GPU 0 has unknown memory)"),
    ),
]


@pytest.mark.parametrize(
    ("request_", "gpus", "assignments", "expected"),
    [case[1:] for case in PLACE_CASES],
    ids=[case[0] for case in PLACE_CASES],
)
def test_place(
    request_: GpuRequest,
    gpus: list[GpuInfo],
    assignments: list[Assignment],
    expected: Placed | Unplaceable,
) -> None:
    assert place(request_, gpus, assignments) == expected


def test_free_memory_now_is_checked_too() -> None:
    request = GpuRequest(gpu_memory=10 * GiB)
    # Nothing declared on GPU 0, but something outside berth uses 20Gi of it.
    free = {G[0]: 4 * GiB, G[1]: 24 * GiB}
    assert place(request, TWO, [], free_memory=free) == Placed((G[1],))
    assert place(request, TWO, [], free_memory={G[0]: 4 * GiB, G[1]: 1 * GiB}) == Unplaceable(
        "needs 10Gi of GPU memory, no GPU has it (GPU 0 has 4Gi free now; GPU 1 has 1Gi free now)"
    )


def test_placing_replicas_one_by_one_fills_the_host() -> None:
    gpus = fake_gpus(3)
    held: list[Assignment] = []
    for n in range(3):
        result = place(GpuRequest(gpus=1), gpus, held)
        assert isinstance(result, Placed)
        held.append(Assignment(f"web/r{n}", result.devices))
    assert [a.devices for a in held] == [(G[0],), (G[1],), (G[2],)]
    assert place(GpuRequest(gpus=1), gpus, held) == Unplaceable(
        "needs 1 GPU, 0 free (GPU 0 held by web/r0; GPU 1 held by web/r1; GPU 2 held by web/r2)"
    )
    assert GpuRequest.of(Resources(gpu_memory=GiB)) == GpuRequest(gpus=0, gpu_memory=GiB)


APPLY_CASES: list[tuple[str, Resources, list[GpuInfo], list[str]]] = [
    ("no GPU asked, none here", Resources(), [], []),
    ("one asked, one here", Resources(gpus=1), fake_gpus(1), []),
    (
        "asked on a host with none",
        Resources(gpus=1),
        [],
        ["resources.gpus: this host has no GPU that berth can use (got 1)"],
    ),
    (
        "more per replica than the host has",
        Resources(gpus=2),
        fake_gpus(1),
        ["resources.gpus: this host has 1 GPU, the spec asks 2 per replica (got 2)"],
    ),
    (
        "more per replica than the host has (plural)",
        Resources(gpus=4),
        fake_gpus(2),
        ["resources.gpus: this host has 2 GPUs, the spec asks 4 per replica (got 4)"],
    ),
    ("gpu_memory fits", Resources(gpu_memory=10 * GiB), fake_gpus(1), []),
    (
        "gpu_memory with no GPU",
        Resources(gpu_memory=10 * GiB),
        [],
        ["resources.gpu_memory: this host has no GPU that berth can use (got 10Gi)"],
    ),
    ("gpu_memory fits only the largest GPU", Resources(gpu_memory=40 * GiB), MIXED, []),
    (
        "gpu_memory larger than the largest GPU",
        Resources(gpu_memory=64 * GiB),
        MIXED,
        ["resources.gpu_memory: more than the largest GPU here has (48Gi) (got 64Gi)"],
    ),
    (
        "gpu_memory on CDI-only GPUs",
        Resources(gpu_memory=10 * GiB),
        fake_gpus(2, memory=None),
        [
            "resources.gpu_memory: the memory of this host's GPUs is unknown (declared by CDI "
            "only, NVML not available), so replicas cannot share them; use resources.gpus "
            "(got 10Gi)"
        ],
    ),
]


@pytest.mark.parametrize(
    ("resources", "gpus", "expected"),
    [case[1:] for case in APPLY_CASES],
    ids=[case[0] for case in APPLY_CASES],
)
def test_apply_problems(resources: Resources, gpus: list[GpuInfo], expected: list[str]) -> None:
    assert apply_problems(resources, gpus) == expected


@pytest.mark.parametrize(
    ("resources", "replicas", "surge", "gpus", "warned"),
    [
        (Resources(gpus=1), 2, 1, TWO, True),  # 3 whole GPUs needed, 2 here
        (Resources(gpus=1), 1, 1, TWO, False),  # 2 fit
        (Resources(gpus=2), 1, 1, TWO, True),
        (Resources(gpus=1), 2, 0, TWO, False),  # no surge, nothing to fit
        (Resources(gpu_memory=12 * GiB), 3, 1, TWO, False),  # two per 24Gi GPU: 4 fit
        (Resources(gpu_memory=12 * GiB), 4, 1, TWO, True),
        (Resources(), 9, 3, TWO, False),  # no GPU asked
        (Resources(gpus=1), 2, 1, [], False),  # no GPU here: apply_problems refuses it
    ],
)
def test_surge_warnings(
    resources: Resources, replicas: int, surge: int, gpus: list[GpuInfo], warned: bool
) -> None:
    warnings = surge_warnings(resources, replicas, surge, gpus)
    assert bool(warnings) == warned
    assert all(w.startswith('update.strategy: "surge" starts') for w in warnings)
