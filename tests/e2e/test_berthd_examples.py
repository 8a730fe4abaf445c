"""End to end, `berth apply --dry-run` on every `config/examples/*.toml` against a running
berthd (the spec's checks and the host checks, nothing recorded).

The host checks, which the parser-only unit test (tests/unit/test_examples.py) cannot make:
GPUs for `resources.gpus`, bind mount sources (under `[mounts] allowed_roots`, existing),
the endpoint port. This machine has no GPU, so every GPU example is refused for
`resources.gpus` alone (plus `mounts[0].source` where it binds a model directory that is
not here); with two fake GPUs declared by CDI (as tests/e2e/test_berthd_gpus.py does) they
pass but for those mounts. The examples' endpoint ports are swapped for free ones, so that
a demo running on this host cannot make the test fail.

The one example that runs here, `model-server.toml` (the model-server image, built by `make
image`), is applied for real: it loads, serves an inference, and berthd scrapes the gauge it
scales on (`model_queue_size`) from its /metrics.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.berthd_process import Berthd, wait_until
from tests.e2e.fake_gpus import fake_nvidia_gpus
from tests.model_server import (
    INFER_ANSWER,
    INFER_BODY,
    model_server_image_fixture,  # noqa: F401 (the model_server_image fixture)
)

pytestmark = pytest.mark.podman

EXAMPLES = Path(__file__).resolve().parents[2] / "config" / "examples"
RUN_HERE = {"echo", "model-server"}  # no GPU, images built by `make image`
BINDS_A_MODEL_DIR = {"llama-cpp", "triton"}  # /srv/models/...: not on this machine


def copies_on_free_ports(directory: Path, free_port: Callable[[], int]) -> dict[str, Path]:
    copies = {}
    directory.mkdir()
    for path in sorted(EXAMPLES.glob("*.toml")):
        text, n = re.subn(
            r"^(\[endpoint\]\nport = )\d+", rf"\g<1>{free_port()}", path.read_text(), flags=re.M
        )
        assert n == 1, f"{path.name}: no `[endpoint]` table opening with its port"
        copies[path.stem] = directory / path.name
        copies[path.stem].write_text(text)
    return copies


def dry_run(daemon: Berthd, path: Path) -> tuple[int, str, list[str]]:
    """(exit status, what it said, the field paths of the problems)."""
    result = daemon.berth("apply", "--dry-run", str(path), check=False)
    fields = re.findall(r"^\s+(\S+): ", result.stderr, flags=re.M)
    return result.returncode, result.stdout + result.stderr, fields


@pytest.fixture
def two_fake_gpus() -> Iterator[None]:
    with fake_nvidia_gpus(2, "examples"):
        yield


def test_every_example_passes_a_dry_run_but_for_the_host_checks_it_cannot_pass_here(
    berthd_factory: Callable[..., Berthd], tmp_path: Path, free_port: Callable[[], int]
) -> None:
    copies = copies_on_free_ports(tmp_path / "examples", free_port)
    daemon = berthd_factory()
    daemon.start()
    for name, path in copies.items():
        status, said, fields = dry_run(daemon, path)
        if name in RUN_HERE:
            assert status == 0 and f"{name}: valid; an apply would be created" in said, said
        else:
            expected = ["resources.gpus"] + (["mounts[0].source"] * (name in BINDS_A_MODEL_DIR))
            assert status != 0 and fields == expected, said
            assert "no GPU that berth can use" in said, said
    assert daemon.json("ls") == []  # a dry run records nothing
    assert daemon.signal(signal.SIGTERM) == 0


def test_with_two_gpus_only_the_missing_model_directories_are_refused(
    berthd_factory: Callable[..., Berthd],
    tmp_path: Path,
    free_port: Callable[[], int],
    two_fake_gpus: None,
) -> None:
    copies = copies_on_free_ports(tmp_path / "examples", free_port)
    daemon = berthd_factory()  # started after the CDI file exists: berthd reads it at start
    daemon.start()
    assert len(daemon.json("status")["gpus"]) == 2
    for name, path in copies.items():
        status, said, fields = dry_run(daemon, path)
        if name in BINDS_A_MODEL_DIR:
            assert status != 0 and fields == ["mounts[0].source"], said
            assert "does not exist on this host" in said, said
        else:
            assert status == 0 and f"{name}: valid; an apply would be created" in said, said


def test_the_model_server_example_loads_serves_and_is_scraped(
    berthd: Berthd, tmp_path: Path, free_port: Callable[[], int], model_server_image: str
) -> None:
    path = copies_on_free_ports(tmp_path / "examples", free_port)["model-server"]
    port = int(re.findall(r"^\[endpoint\]\nport = (\d+)", path.read_text(), flags=re.M)[0])
    berthd.start()
    started = time.monotonic()
    berthd.berth("apply", str(path), "--wait", "--timeout", "120")
    assert time.monotonic() - started >= 20  # its LOAD_SECONDS: ready only once loaded
    response = httpx.post(
        f"http://127.0.0.1:{port}/v2/models/tiny/infer", json=INFER_BODY, timeout=10
    )
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == INFER_ANSWER
    scraped: dict[str, Any] = {}

    def queue_scraped() -> bool:
        scraped.update(berthd.json("metrics", "model-server").get("scraped") or {})
        return scraped.get("average", {}).get("model_queue_size") is not None

    wait_until("model_queue_size scraped from the replica", queue_scraped, timeout=30, interval=0.5)
    assert scraped["queries"] == ["model_queue_size"]
    assert scraped["average"]["model_queue_size"] == 0  # nothing waiting now
