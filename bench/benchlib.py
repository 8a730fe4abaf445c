"""What the Python bench scripts share (run as `python bench/NAME.py`: this directory is on
sys.path). Loopback only."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait(check: Callable[[], bool], timeout: float, what: str, *, every: float = 0.1) -> None:
    """Until `check()` holds; exits the script saying what it waited for past `timeout`."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(every)


def remove_instance_containers(instance: str) -> None:
    """Remove the containers of the berthd instance this script started (its label)."""
    if not instance:
        return
    ids = subprocess.run(
        ["podman", "ps", "-aq", "--filter", f"label=io.berth.instance={instance}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    if ids:
        subprocess.run(["podman", "rm", "-f", "-t", "0", *ids], capture_output=True, check=False)
