"""End-to-end fixtures: berthd as a process on a private state dir and socket.

`berthd` is a daemon not yet started (tests call `.start()`); `berthd_factory(**kw)` makes
one with extra arguments (`extra_args`, `env`). Whatever happens, each daemon made here is
killed by PID and the containers of its instance are removed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.berthd import instance_id
from daemon.runtime.interface import LABEL_INSTANCE
from tests.conftest import podman_binary, remove_labelled_containers
from tests.e2e.berthd_process import Berthd


@pytest.fixture
def berthd_factory(
    tmp_path: Path, podman_url: str, echo_image: str
) -> Iterator[Callable[..., Berthd]]:
    made: list[Berthd] = []

    def make(**kwargs: Any) -> Berthd:
        daemon = Berthd(
            tmp_path / "state",
            tmp_path / "run" / "berth.sock",
            podman_url,
            tmp_path / "berthd.log",
            **kwargs,
        )
        made.append(daemon)
        return daemon

    try:
        yield make
    finally:
        for daemon in made:
            daemon.stop()
            remove_labelled_containers(
                podman_binary(), {LABEL_INSTANCE: instance_id(daemon.state_dir)}
            )


@pytest.fixture
def berthd(berthd_factory: Callable[..., Berthd]) -> Berthd:
    return berthd_factory()
