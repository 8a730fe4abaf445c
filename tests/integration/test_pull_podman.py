"""Pulls against a real registry on loopback (tests/local_registry.py), through a throttling
proxy: what Podman 4.3 keeps of a pull whose link dropped, and what the retry fetches."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from daemon.runtime.interface import PullProgress, RegistryAuth, TemporaryRuntimeError
from daemon.runtime.podman import PodmanRuntime
from tests.local_registry import (
    PASSWORD,
    USER,
    RegistryRig,
    ThrottlingProxy,
    build_random_image,
    push,
    registry_rig,
    remove_images,
)

pytestmark = pytest.mark.podman

MB = 1_000_000
AUTH = RegistryAuth(username=USER, password=PASSWORD)


@pytest.fixture(scope="module")
def rig() -> Iterator[RegistryRig]:
    with registry_rig(proxies=1) as made:
        yield made


async def test_a_retry_after_a_dropped_link_fetches_only_the_layers_not_stored(
    rig: RegistryRig, echo_image: str, tmp_path: Path
) -> None:
    """Podman commits each layer once it and those before it are in: a pull cut while the
    last (big) layer downloads keeps the two small ones, and the retry fetches the big one
    again from its first byte (a layer cut mid-download is not resumed)."""
    local = f"localhost/berth-pull-resume:{uuid.uuid4().hex[:8]}"
    remote = f"{rig.proxy_address(0)}/berth/resume:1"
    build_random_image(tmp_path / "ctx", local, echo_image, [6 * MB, 6 * MB, 40 * MB])
    push(local, f"{rig.address}/berth/resume:1")
    remove_images(local)  # else its layers are "already there" for the pull
    runtime = PodmanRuntime(rig.podman_url)
    proxy = ThrottlingProxy(int(rig.address.rsplit(":", 1)[1]), 16 * MB, rig.proxy_ports[0])
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.serve)
            first: list[PullProgress] = []
            proxy.cut_at = 24 * MB  # both small layers in, the big one a quarter
            with trio.fail_after(60), pytest.raises(TemporaryRuntimeError, match="EOF|reset"):
                await runtime.pull(remote, auth=AUTH, progress=first.append)
            fetched_first = proxy.passed
            assert not await runtime.image_exists(remote)

            proxy.rate = 200 * MB  # the link is back, and fast
            retry: list[PullProgress] = []
            with trio.fail_after(60):
                await runtime.pull(remote, auth=AUTH, progress=retry.append)
            fetched_again = proxy.passed - fetched_first
            nursery.cancel_scope.cancel()
        assert await runtime.image_exists(remote)
        # Every layer but the big one is stored already (the echo image's, the small two):
        # only one layer is fetched, and only its bytes are counted.
        last = retry[-1]
        assert last.layers_done == last.layers_total >= 4
        stored = [p for p in retry if p.bytes_total is None]
        assert stored[-1].layers_done == last.layers_total - 1
        assert retry[-1].bytes_total == pytest.approx(40 * MB, rel=0.01)  # only what it fetched
        # 40 MB again (from its first byte), not the 52 MB of all three.
        assert 40 * MB <= fetched_again < 44 * MB, (fetched_first, fetched_again)
        assert fetched_first < 30 * MB and first  # it was cut, having said how it went
    finally:
        await runtime.aclose()
        remove_images(remote, local)
