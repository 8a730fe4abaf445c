"""End to end, the day-to-day operations: a specs dir applied at start and on SIGHUP,
`berth logs -f`, a killed replica restarted in place, an orphaned container cleaned up, an
endpoint port claimed twice refused. berthd runs as a process; replicas in real Podman.
"""

from __future__ import annotations

import select
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from daemon.berthd import instance_id
from daemon.runtime.interface import LABEL_DEPLOYMENT, LABEL_INSTANCE, LABEL_REPLICA
from tests.conftest import podman_binary
from tests.e2e.berthd_process import BIN, Berthd, get_text, wait_until

pytestmark = pytest.mark.podman

SPEC = """
name = "{name}"
image = "{image}"
command = ["httpd", "-f", "-vv", "-p", "8080", "-h", "/www"]
port = 8080
stop_timeout = "1s"
[env]
MESSAGE = "{message}"
[replicas]
count = 1
[health.readiness]
path = "/health"
period = "1s"
[endpoint]
port = {port}
bind = "127.0.0.1"
"""


@pytest.fixture
def berthd(berthd_factory: Callable[..., Berthd], tmp_path: Path) -> Berthd:
    specs = tmp_path / "specs"
    specs.mkdir()
    return berthd_factory(extra_args=["--specs", str(specs)])


def revision_of(daemon: Berthd, name: str) -> int:
    found = [d for d in daemon.json("ls") if d["name"] == name]
    return int(found[0]["revision"]) if found else 0


def test_day_to_day_operations(
    berthd: Berthd, tmp_path: Path, echo_image: str, free_port: Callable[[], int]
) -> None:
    podman = podman_binary()
    instance = instance_id(berthd.state_dir)
    # An orphan: a container of this instance whose deployment berthd never heard of.
    orphan = subprocess.run(
        [
            podman,
            "run",
            "-d",
            "--label",
            f"{LABEL_INSTANCE}={instance}",
            "--label",
            f"{LABEL_DEPLOYMENT}=ghost",
            "--label",
            f"{LABEL_REPLICA}=0rphan00",
            echo_image,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()

    # --specs: applied at start
    port = free_port()
    spec_file = tmp_path / "specs" / "svc.toml"
    spec_file.write_text(SPEC.format(name="svc", image=echo_image, message="one", port=port))
    berthd.start()
    wait_until("svc from the specs dir", lambda: revision_of(berthd, "svc") == 1, timeout=15)
    url = f"http://127.0.0.1:{port}/cgi-bin/echo"
    wait_until("svc to serve", lambda: _body(url).endswith("message=one\n"), timeout=30)

    # the orphan is removed
    wait_until("the orphan to be removed", lambda: not _exists(podman, orphan), timeout=30)

    # SIGHUP: the specs dir is applied again
    spec_file.write_text(SPEC.format(name="svc", image=echo_image, message="two", port=port))
    berthd.send(signal.SIGHUP)
    wait_until("revision 2 after SIGHUP", lambda: revision_of(berthd, "svc") == 2, timeout=15)
    wait_until("svc to serve revision 2", lambda: _body(url).endswith("message=two\n"), timeout=30)

    # logs -f: a request shows up in the followed log
    follower = subprocess.Popen(
        [str(BIN / "berth"), "--socket", str(berthd.socket), "logs", "svc", "-f", "--tail", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        time.sleep(1.0)
        for _ in range(3):
            get_text(f"http://127.0.0.1:{port}/marker-42")
        assert follower.stdout is not None
        seen = b""
        deadline = time.monotonic() + 15

        while b"marker-42" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([follower.stdout], [], [], 0.5)
            if ready:
                chunk = follower.stdout.read1(4096)  # type: ignore[attr-defined]
                if not chunk:
                    break
                seen += chunk
        assert b"marker-42" in seen, seen
    finally:
        follower.terminate()
        follower.wait(timeout=10)
        for stream in (follower.stdout, follower.stderr):
            if stream is not None:
                stream.close()

    # a killed replica is started again under the same replica id
    replica = berthd.json("get", "svc")["replicas"][0]
    subprocess.run([podman, "kill", replica["container_id"]], capture_output=True, check=True)
    wait_until(
        "the killed replica to be restarted",
        lambda: (
            [(r["id"], r["restarts"], r["state"]) for r in berthd.json("get", "svc")["replicas"]]
            == [(replica["id"], 1, "ready")]
        ),
        timeout=30,
    )
    assert "restarted" in berthd.berth("events", "svc").stdout

    # an endpoint port claimed by another deployment is refused, naming the field
    other = tmp_path / "other.toml"
    other.write_text(SPEC.format(name="other", image=echo_image, message="x", port=port))
    refused = berthd.berth("apply", str(other), check=False)
    assert refused.returncode != 0 and "endpoint.port" in refused.stderr and "svc" in refused.stderr
    assert revision_of(berthd, "other") == 0


def _body(url: str) -> str:
    try:
        status, body = get_text(url, timeout=2)
    except Exception:  # noqa: BLE001 - not serving yet
        return ""
    return body if status == 200 else ""


def _exists(podman: str, container_id: str) -> bool:
    return (
        subprocess.run(
            [podman, "container", "exists", container_id], capture_output=True, check=False
        ).returncode
        == 0
    )
