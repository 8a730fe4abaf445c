"""The round trip: `berth export` of the echo example to Kubernetes, run by `podman kube
play` on this host, answering on its port, and removed by `podman kube down`.

The exported Deployment and Service are applied with the overlay docs/export.md gives for
Podman ("Trying an export with podman kube play"), which a cluster does not need:
- the container's app port gets `hostPort` (a free port here) and `hostIP: 127.0.0.1`:
  `podman kube play` publishes a port only when the pod asks for a host port, and loopback
  keeps it off the network;
- `replicas: 1`: Podman makes one pod per replica, each asking for the same host port;
- `nvidia.com/gpu` limits are dropped: Podman 4.3 does not turn them into a CDI device (a
  GPU there needs `podman kube play` on a Pod with the CDI device annotation of a later
  Podman, or a plain `podman run --device nvidia.com/gpu=N`); the echo example has none,
  so this is the generic overlay, not a no-op claimed to be tested.
The Deployment is renamed with a unique suffix so that the pod this test starts is known
by name and id, and only that pod is removed if the test fails half-way.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from config.parse import parse_spec
from daemon.cli import main as cli
from tests.conftest import podman_binary

pytestmark = pytest.mark.podman

REPO = Path(__file__).resolve().parents[2]
ECHO = REPO / "config" / "examples" / "echo.toml"
PLAY_TIMEOUT = 120.0
ANSWER_TIMEOUT = 60.0
HEALTH_BODY = (REPO / "config" / "examples" / "echo-image" / "www" / "health").read_text()


def podman_overlay(documents: list[Any], *, app_port: int, host_port: int, name: str) -> list[Any]:
    """The exported Deployment and Service, changed as docs/export.md says for Podman."""
    wanted = [d for d in documents if d.get("kind") in ("Deployment", "Service")]
    for doc in wanted:
        if doc["kind"] != "Deployment":
            continue
        doc["metadata"]["name"] = name
        doc["spec"]["replicas"] = 1
        for container in doc["spec"]["template"]["spec"]["containers"]:
            for port in container.get("ports", ()):
                if port["containerPort"] == app_port:
                    port["hostPort"] = host_port
                    port["hostIP"] = "127.0.0.1"
            for kind in ("limits", "requests"):
                container.get("resources", {}).get(kind, {}).pop("nvidia.com/gpu", None)
    return wanted


def podman(*args: str, timeout: float = PLAY_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [podman_binary(), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture
def started_pods() -> Iterator[list[str]]:
    """The ids of the pods this test's `podman kube play` made; any left are removed."""
    pods: list[str] = []
    try:
        yield pods
    finally:
        for pod in pods:
            if podman("pod", "exists", pod).returncode == 0:
                podman("pod", "rm", "-f", "-t", "0", pod)


def pod_ids(play_output: str) -> list[str]:
    """`podman kube play` prints `Pod:` then the pod's id on the next line."""
    lines = play_output.splitlines()
    return [lines[i + 1].strip() for i, line in enumerate(lines[:-1]) if line.strip() == "Pod:"]


def test_exported_deployment_and_service_run_under_podman_kube_play(
    tmp_path: Path,
    echo_image: str,
    free_port: Callable[[], int],
    started_pods: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = parse_spec(ECHO.read_text())
    assert spec.image == echo_image
    out = tmp_path / "export"
    assert cli.main(["export", "--file", str(ECHO), "--to", "kubernetes", "--out", str(out)]) == 0
    capsys.readouterr()
    documents: list[Any] = []
    for path in sorted(out.glob("*.yaml")):
        documents += [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert {"Deployment", "Service"} <= {d["kind"] for d in documents}

    host_port = free_port()
    name = f"{spec.name}-kubeplay-{uuid.uuid4().hex[:8]}"
    play = tmp_path / "play.yaml"
    overlaid = podman_overlay(documents, app_port=spec.port, host_port=host_port, name=name)
    play.write_text(yaml.safe_dump_all(overlaid, sort_keys=False))

    played = podman("kube", "play", str(play))
    started_pods += pod_ids(played.stdout)
    assert played.returncode == 0, played.stdout + played.stderr
    assert len(started_pods) == 1, played.stdout

    url = f"http://127.0.0.1:{host_port}/health"
    deadline = time.monotonic() + ANSWER_TIMEOUT
    last = "no answer yet"
    while True:
        try:
            answer = httpx.get(url, timeout=2.0)
            if answer.status_code == 200 and answer.text == HEALTH_BODY:
                break
            last = f"{answer.status_code} {answer.text[:80]!r}"
        except httpx.TransportError as exc:
            last = repr(exc)
        if time.monotonic() > deadline:
            logs = podman("pod", "logs", started_pods[0], timeout=30)
            pytest.fail(
                f"{url} did not answer 200 {HEALTH_BODY!r} within {ANSWER_TIMEOUT:.0f}s "
                f"(last: {last}); pod logs:\n{logs.stdout}{logs.stderr}",
                pytrace=False,
            )
        time.sleep(0.2)

    down = podman("kube", "down", str(play))
    assert down.returncode == 0, down.stdout + down.stderr
    assert podman("pod", "exists", started_pods[0]).returncode == 1  # gone
    assert podman("pod", "exists", f"{name}-pod-0").returncode == 1
