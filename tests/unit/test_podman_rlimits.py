"""A replica's rlimits reach Podman whole: the engine's defaults, the spec's on top."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from types import SimpleNamespace
from typing import Any

import pytest

from config.spec import Ulimit
from daemon.runtime.interface import ContainerSpec, RuntimeFailure
from daemon.runtime.podman import LABEL_RLIMITS_PROBE, PodmanRuntime
from daemon.runtime.rlimits import SETRLIMIT_HINT, engine_defaults, ulimits_kwarg

INSPECTED = [
    {"Name": "RLIMIT_NOFILE", "Soft": 1024, "Hard": 1024},
    {"Name": "RLIMIT_NPROC", "Soft": 4096, "Hard": 4096},
]


def test_engine_defaults_read_from_inspect() -> None:
    assert engine_defaults(INSPECTED) == {"nofile": Ulimit(1024, 1024), "nproc": Ulimit(4096, 4096)}
    assert engine_defaults(None) == {}
    assert engine_defaults([{"Name": "RLIMIT_CORE", "Soft": "x"}, {"Hard": 1}]) == {}


def test_the_spec_replaces_only_what_it_names() -> None:
    defaults = engine_defaults(INSPECTED)
    asked = {"memlock": Ulimit(4 << 20, 8 << 20), "nofile": Ulimit(2048, 2048)}
    assert ulimits_kwarg(asked, defaults) == [
        {"Name": "memlock", "Soft": 4 << 20, "Hard": 8 << 20},
        {"Name": "nofile", "Soft": 2048, "Hard": 2048},
        {"Name": "nproc", "Soft": 4096, "Hard": 4096},
    ]


@pytest.fixture
def runtime() -> Iterator[PodmanRuntime]:
    rt = PodmanRuntime("unix:///nonexistent/podman.sock", timeout=1.0)
    yield rt
    rt._client.close()


class Recorder:
    """Stands in for `PodmanRuntime._call`: records each create's kwargs, answers the
    probe's create with INSPECTED limits, and fails a start as told."""

    def __init__(self) -> None:
        self.creates: list[dict[str, Any]] = []
        self.start_error: str | None = None

    async def __call__(self, fn: object, *, what: str, **options: object) -> object:
        if isinstance(fn, partial) and getattr(fn.func, "__name__", "") == "create":
            self.creates.append(fn.keywords)
            return SimpleNamespace(
                id=f"c{len(self.creates)}", attrs={"HostConfig": {"Ulimits": INSPECTED}}
            )
        if what.startswith("start") and self.start_error is not None:
            raise RuntimeFailure(f"{what}: {self.start_error}")
        return None


def spec(**fields: object) -> ContainerSpec:
    return ContainerSpec("berth-x-r1", "localhost/x:1", {}, 8080, 34567, **fields)  # type: ignore[arg-type]


async def test_create_sends_shm_ipc_and_the_merged_ulimits(
    runtime: PodmanRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = Recorder()
    monkeypatch.setattr(runtime, "_call", calls)
    removed: list[str] = []

    async def remove(container_id: str) -> None:
        removed.append(container_id)

    monkeypatch.setattr(runtime, "remove", remove)

    await runtime.create(spec())
    plain = calls.creates[-1]
    assert plain["ipc_mode"] == "private"
    assert "shm_size" not in plain and "ulimits" not in plain

    asked = {"memlock": Ulimit(0, 0)}
    await runtime.create(spec(shm_size=256 << 20, ulimits=asked))
    await runtime.create(spec(ulimits={"nofile": Ulimit(2048, 2048)}))
    probe, first, second = calls.creates[1:]
    assert probe["labels"] == {LABEL_RLIMITS_PROBE: "1"} and probe["command"] == ["true"]
    assert removed == ["c2"]  # the probe, once: the defaults are remembered
    assert first["shm_size"] == 256 << 20
    assert first["ulimits"] == [
        {"Name": "memlock", "Soft": 0, "Hard": 0},
        {"Name": "nofile", "Soft": 1024, "Hard": 1024},
        {"Name": "nproc", "Soft": 4096, "Hard": 4096},
    ]
    assert second["ulimits"] == [
        {"Name": "nofile", "Soft": 2048, "Hard": 2048},
        {"Name": "nproc", "Soft": 4096, "Hard": 4096},
    ]


async def test_a_start_refused_an_rlimit_says_what_to_do(
    runtime: PodmanRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = Recorder()
    monkeypatch.setattr(runtime, "_call", calls)
    calls.start_error = "runc: error setting rlimits for ready process: error setting rlimit type 7"
    with pytest.raises(RuntimeFailure) as info:
        await runtime.start("c" * 64)
    assert str(info.value).endswith(f"type 7 ({SETRLIMIT_HINT})")
    calls.start_error = "no such file"
    with pytest.raises(RuntimeFailure, match="no such file$"):
        await runtime.start("c" * 64)
