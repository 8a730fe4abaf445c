"""Pulls of real images, end to end: berthd and the `berth` CLI against a real registry on
loopback (tests/local_registry.py), on a Podman service that may speak to it.

- An image of ~300 MB of random layers, served through a proxy that passes 4.5 MB/s for
  all connections together: the pull takes over a minute (the old pull, quiet and behind a
  60 s read timeout, never finished one), is seen while it runs (`berth get`, `apply --wait`,
  events) and is never restarted. `berth pull` then finds it stored.
- `pull = "always"` picks up a tag pushed again: the new revision's replica runs the new
  image, not the one stored under that tag.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from daemon.berthd import instance_id
from daemon.runtime.interface import LABEL_INSTANCE
from tests.conftest import free_port, podman_binary, remove_labelled_containers
from tests.e2e.berthd_process import Berthd
from tests.local_registry import (
    PASSWORD,
    USER,
    RegistryRig,
    ThrottlingProxy,
    build_random_image,
    podman,
    push,
    registry_rig,
    remove_images,
)
from tests.specs import echo_spec

pytestmark = [pytest.mark.podman, pytest.mark.slow]

MB = 1_000_000
RATE = 4.5 * MB  # bytes/s through the proxy, all connections together
LAYERS = [75 * MB] * 4  # 300 MB: ~67 s at RATE


@pytest.fixture(scope="module")
def rig() -> Iterator[RegistryRig]:
    with registry_rig(proxies=1) as made:
        yield made


@pytest.fixture
def daemon(rig: RegistryRig, tmp_path: Path) -> Iterator[Berthd]:
    config = tmp_path / "berthd.toml"  # the password files lie in tmp_path
    config.write_text(f'credentials_roots = ["{tmp_path}"]\n')
    berthd = Berthd(
        tmp_path / "state",
        tmp_path / "run" / "berth.sock",
        rig.podman_url,
        tmp_path / "log",
        extra_args=["--config", str(config)],
    )
    try:
        berthd.start()
        yield berthd
    finally:
        berthd.stop()
        remove_labelled_containers(podman_binary(), {LABEL_INSTANCE: instance_id(berthd.state_dir)})


def spec_file(tmp_path: Path, text: str, password_file: Path) -> Path:
    password_file.write_text(PASSWORD + "\n")
    password_file.chmod(0o600)
    registry = f'[registry]\nusername = "{USER}"\npassword_file = "{password_file}"\n'
    path = tmp_path / f"spec-{uuid.uuid4().hex[:6]}.toml"
    path.write_text(text + registry)
    return path


def events(daemon: Berthd, name: str) -> list[dict[str, Any]]:
    out = daemon.berth("events", name, "--json", "--limit", "1000").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


async def test_a_pull_over_a_minute_completes_is_seen_and_is_not_restarted(
    rig: RegistryRig, daemon: Berthd, echo_image: str, tmp_path: Path
) -> None:
    local = f"localhost/berth-pull-big:{uuid.uuid4().hex[:8]}"
    image = f"{rig.proxy_address(0)}/berth/big:1"
    build_random_image(tmp_path / "ctx", local, echo_image, LAYERS)
    push(local, f"{rig.address}/berth/big:1")
    remove_images(local, image)  # nothing of it stored but the echo image's layers
    port = free_port()
    spec = spec_file(tmp_path, echo_spec("big", image, port, count=1), tmp_path / "password")
    proxy = ThrottlingProxy(int(rig.address.rsplit(":", 1)[1]), RATE, rig.proxy_ports[0])
    seen: list[dict[str, Any]] = []
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.serve)

            async def watch() -> None:
                while True:
                    got = await trio.to_thread.run_sync(
                        lambda: daemon.berth("get", "big", "--json", check=False)
                    )
                    if got.returncode == 0:  # (0 once the apply has recorded it)
                        pulling = json.loads(got.stdout).get("pulling")
                        if pulling:
                            seen.append(pulling)
                    await trio.sleep(2.0)

            nursery.start_soon(watch)
            started = time.monotonic()
            with trio.fail_after(170):
                applied = await trio.to_thread.run_sync(
                    lambda: daemon.berth(
                        "apply", str(spec), "--wait", "--timeout", "160", timeout=165
                    )
                )
            took = time.monotonic() - started
            pulled = await trio.to_thread.run_sync(daemon.berth, "pull", "big")
            nursery.cancel_scope.cancel()
        every = events(daemon, "big")
    finally:
        remove_images(image)  # (forced: it would kill the replica, so after the events)
    assert took > 60, f"the pull took {took:.0f}s: too fast to prove anything"
    assert proxy.passed >= sum(LAYERS)

    # apply --wait said how the pull went, in figures, a line now and then (not each second).
    lines = [line for line in applied.stdout.splitlines() if "pulling" in line]
    assert 3 <= len(lines) <= took / 5 + 8, applied.stdout
    assert f"pulling {image}" in lines[-1] and "layers" in lines[-1] and "MB" in lines[-1]

    # berth get showed it under way: the object, its figures growing.
    assert len(seen) >= 10
    assert set(seen[-1]) >= {
        "image",
        "layers_done",
        "layers_total",
        "bytes_done",
        "bytes_total",
        "started_at",
    }
    done = [s["bytes_done"] for s in seen if s["bytes_done"] is not None]
    assert done == sorted(done) and done[-1] > done[0] > 0
    assert max(s["layers_total"] for s in seen) >= len(LAYERS)

    # Events: one start, progress now and then, one end with its duration; no retry.
    said = [e for e in every if e["kind"] in ("pull", "pulled", "create-failed")]
    said_text = "\n".join(f"{e['time']} {e['kind']} {e['message']}" for e in every)
    kinds = [e["kind"] for e in said]
    assert kinds.count("create-failed") == 0, said_text
    starts = [e for e in said if e["message"] == f"pulling {image}"]
    assert len(starts) == 1, said_text
    progress = [e for e in said if e["kind"] == "pull" and e not in starts]
    assert 3 <= len(progress) <= took / 10 + 4, said_text  # thinned: one per 10 s at most, or so
    assert "layers" in progress[0]["message"]
    end, again = [e for e in said if e["kind"] == "pulled"]  # the create's, berth pull's
    figures = re.fullmatch(
        rf"pulled {re.escape(image)} in ([\d.]+)s \((\d+)/\2 layers, ([\d.]+)/\3 MB\)",
        end["message"],
    )
    assert figures is not None, end["message"]
    assert float(figures[1]) > 55 and int(figures[2]) >= len(LAYERS)
    assert float(figures[3]) == pytest.approx(sum(LAYERS) / MB, rel=0.01)

    # berth pull: the image is stored, so the pull finds every layer there and is quick.
    assert pulled.returncode == 0
    assert f"big: {image} is on this host" in pulled.stdout
    assert f"pulled {image} in 0." in again["message"]  # every layer there already


async def test_berth_pull_says_why_it_cannot(
    rig: RegistryRig, daemon: Berthd, echo_image: str, tmp_path: Path
) -> None:
    missing = daemon.berth("pull", "nosuch", check=False)
    assert missing.returncode == 1
    assert missing.stderr == "berth: no deployment named 'nosuch'\n"
    image = f"{rig.address}/berth/never-pushed:1"
    spec = spec_file(tmp_path, echo_spec("gone", image, free_port(), count=1), tmp_path / "pw")
    daemon.berth("apply", str(spec))
    failed = daemon.berth("pull", "gone", check=False)
    assert failed.returncode == 1
    assert failed.stderr.startswith(f"berth: gone: pull {image}: ")
    assert "manifest unknown" in failed.stderr and len(failed.stderr.splitlines()) == 1
    as_json = daemon.berth("pull", "gone", "--json", check=False)
    assert as_json.returncode == 1
    last = json.loads(as_json.stdout.splitlines()[-1])
    assert last["done"] is False and "manifest unknown" in last["error"]


async def test_pull_always_picks_up_a_tag_pushed_again(
    rig: RegistryRig, daemon: Berthd, echo_image: str, tmp_path: Path
) -> None:
    image = f"{rig.address}/berth/mutable:latest"
    second = f"localhost/berth-pull-v2:{uuid.uuid4().hex[:8]}"
    push(echo_image, image)
    build_random_image(tmp_path / "v2", second, echo_image, [1 * MB])
    text = echo_spec("mutable", image, free_port(), count=1)
    text = text.replace("port = 8080\n", 'port = 8080\npull = "always"\n', 1)
    try:
        daemon.berth("apply", str(spec_file(tmp_path, text, tmp_path / "pw")), "--wait")
        first_id = _running_image_id(daemon)
        assert first_id == _image_id(echo_image)
        push(second, image)  # the same tag, another image
        changed = text.replace('MESSAGE = "hello"', 'MESSAGE = "again"')
        daemon.berth("apply", str(spec_file(tmp_path, changed, tmp_path / "pw")), "--wait")
        assert _running_image_id(daemon) == _image_id(second) != first_id
    finally:
        remove_images(image, second)


def _image_id(reference: str) -> str:
    return podman("image", "inspect", "--format", "{{.Id}}", reference).stdout.strip()


def _running_image_id(daemon: Berthd) -> str:
    (replica,) = [r for r in daemon.json("get", "mutable")["replicas"] if r["ready"]]
    result = subprocess.run(
        [podman_binary(), "inspect", "--format", "{{.Image}}", replica["container_id"]],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()
