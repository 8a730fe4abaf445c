"""Integration fixtures: a `PodmanRuntime` on the session's private Podman service.

The session-wide Podman fixtures (`podman_url`, `echo_image`, `test_labels`, `free_port`)
are in tests/conftest.py so that tests/e2e shares them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from daemon.runtime.podman import PodmanRuntime


@pytest.fixture
async def runtime(podman_url: str) -> AsyncIterator[PodmanRuntime]:
    rt = PodmanRuntime(podman_url)
    try:
        yield rt
    finally:
        await rt.aclose()
