"""End to end: berthd as a process, driven by the `berth` CLI, replicas in real Podman.

apply 2 replicas -> both answer through the endpoint -> update -> revision 2 with a new
spec_id -> SIGTERM leaves replicas running -> restart -> kill -9 -> restart -> the same
container ids serve -> rm (history kept).
"""

from __future__ import annotations

import re
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from daemon.berthd import instance_id
from daemon.runtime.interface import LABEL_INSTANCE
from tests.conftest import podman_binary
from tests.e2e.berthd_process import Berthd, get_text, wait_until
from tests.specs import echo_spec

pytestmark = pytest.mark.podman


def replicas_answering(url: str, tries: int = 12) -> tuple[set[str], set[str]]:
    names, messages = set(), set()
    for _ in range(tries):
        status, body = get_text(url)
        assert status == 200, body
        names.add(re.search(r"replica=(\S+)", body).group(1))  # type: ignore[union-attr]
        messages.add(re.search(r"message=(.*)", body).group(1))  # type: ignore[union-attr]
    return names, messages


def container_ids(daemon: Berthd) -> set[str]:
    return {r["container_id"] for r in daemon.json("get", "e2e-echo")["replicas"]}


def podman_ids(state: Path) -> set[str]:
    out = subprocess.run(
        [
            podman_binary(),
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            f"label={LABEL_INSTANCE}={instance_id(state)}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(out.split())


def test_apply_update_restart_adopt_remove(
    berthd: Berthd, tmp_path: Path, echo_image: str, free_port: Callable[[], int]
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/cgi-bin/echo"
    spec = tmp_path / "echo.toml"
    berthd.start()

    # a dry run checks and changes nothing
    spec.write_text(echo_spec("e2e-echo", echo_image, port, message="v1"))
    dry = berthd.berth("apply", "--dry-run", str(spec)).stdout
    assert dry.startswith("e2e-echo: valid; an apply would be created (spec_id ")
    assert berthd.json("ls") == []

    # apply: 2 replicas, both answer through the endpoint
    out = berthd.berth("apply", str(spec), "--wait").stdout
    assert "revision 1" in out and "created" in out
    first = berthd.json("ls")[0]
    assert (first["name"], first["revision"], first["ready"], first["desired"]) == (
        "e2e-echo",
        1,
        2,
        2,
    )
    names, messages = replicas_answering(url)
    assert len(names) == 2 and messages == {"v1"}

    assert "an apply would be unchanged" in berthd.berth("apply", "--dry-run", str(spec)).stdout
    # identical re-apply: unchanged, nothing new
    assert "unchanged" in berthd.berth("apply", str(spec)).stdout

    # update: revision 2, new spec_id, every replica on it
    spec.write_text(echo_spec("e2e-echo", echo_image, port, message="v2"))
    assert "revision 2" in berthd.berth("apply", str(spec), "--wait").stdout
    history = berthd.json("history", "e2e-echo")
    assert [h["revision"] for h in history] == [1, 2]
    assert history[0]["spec_id"] != history[1]["spec_id"]
    assert [h["status"] for h in history] == ["superseded", "active"]
    wait_until(
        "the old replicas to be removed",
        lambda: (
            {r["spec_id"] for r in berthd.json("get", "e2e-echo")["replicas"]}
            == {history[1]["spec_id"]}
            and len(container_ids(berthd)) == 2
        ),
        timeout=30,
    )
    names, messages = replicas_answering(url)
    assert len(names) == 2 and messages == {"v2"}
    before = container_ids(berthd)
    assert podman_ids(berthd.state_dir) == before

    # SIGTERM: exit 0, replicas keep running
    assert berthd.signal(signal.SIGTERM) == 0
    assert podman_ids(berthd.state_dir) == before

    # restart: the same containers serve; then kill -9 and restart: still the same ones
    berthd.start()
    wait_until("the endpoint to serve again", lambda: _serves(url), timeout=30)
    assert container_ids(berthd) == before and podman_ids(berthd.state_dir) == before
    berthd.signal(signal.SIGKILL)
    assert podman_ids(berthd.state_dir) == before
    berthd.start()
    wait_until("the endpoint to serve after kill -9", lambda: _serves(url), timeout=30)
    names, _ = replicas_answering(url)
    assert len(names) == 2
    assert container_ids(berthd) == before and podman_ids(berthd.state_dir) == before

    # rm: replicas gone, history kept
    berthd.berth("rm", "e2e-echo")
    assert podman_ids(berthd.state_dir) == set()
    assert berthd.json("ls") == []
    assert [h["revision"] for h in berthd.json("history", "e2e-echo")] == [1, 2]
    events = berthd.berth("events", "e2e-echo").stdout
    assert "created" in events and "removed" in events


def _serves(url: str) -> bool:
    try:
        return get_text(url, timeout=2)[0] == 200
    except httpx.HTTPError:
        return False


def test_refused_spec_names_fields_and_writes_nothing(berthd: Berthd, tmp_path: Path) -> None:
    berthd.start()
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'name = "Bad Name"\nimage = "localhost/x:1"\nport = 8080\n'
        "[replicas]\nmin = 2\nmax = 1\n[endpoint]\nport = 80\n"
    )
    for dry_run in (("--dry-run",), ()):  # the same refusal, with or without a dry run
        result = berthd.berth("apply", *dry_run, str(bad), check=False)
        assert result.returncode != 0
        for field in ("name", "replicas.max", "endpoint.port"):
            assert field in result.stderr
    assert berthd.json("ls") == []
    assert berthd.berth("history", "Bad Name", check=False).returncode != 0
