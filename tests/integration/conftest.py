"""Integration fixtures: a `PodmanRuntime` on the session's private Podman service, and fake
GPUs declared by a CDI spec of the test's own.

The session-wide Podman fixtures (`podman_url`, `echo_image`, `test_labels`, `free_port`)
are in tests/conftest.py so that tests/e2e shares them.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from daemon.runtime.podman import PodmanRuntime


@pytest.fixture
async def runtime(podman_url: str) -> AsyncIterator[PodmanRuntime]:
    rt = PodmanRuntime(podman_url)
    try:
        yield rt
    finally:
        await rt.aclose()


CDI_DIR = Path("/var/run/cdi")


@pytest.fixture
def fake_gpu_kind() -> Iterator[str]:
    """Writes a CDI spec declaring GPUs "0" and "1" (each maps /dev/nvidiaN to /dev/null and
    sets BERTH_TEST_GPU) under /var/run/cdi, the directory Podman 4.3 reads; yields its kind
    (unique to the test, so that two runs on one host never declare the same names); removes
    the file whatever happened."""
    kind = f"berth-test-{uuid.uuid4().hex[:10]}.example/gpu"
    devices = "".join(
        f"""\
- name: "{n}"
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia{n}
      hostPath: /dev/null
    env:
    - BERTH_TEST_GPU={n}
"""
        for n in (0, 1)
    )
    path = CDI_DIR / f"{kind.split('.')[0]}.yaml"
    CDI_DIR.mkdir(parents=True, exist_ok=True)
    path.write_text(f"cdiVersion: 0.5.0\nkind: {kind}\ndevices:\n{devices}")
    try:
        yield kind
    finally:
        path.unlink(missing_ok=True)
